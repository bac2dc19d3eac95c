"""The Billing pages, one module per subject, all on the lm_billing blueprint."""

from __future__ import annotations

from flask import Blueprint


def register(blueprint: Blueprint) -> None:
    from . import assign, background, bills, customers, plans, problems, runs, servers

    servers.register(blueprint)
    problems.register(blueprint)
    runs.register(blueprint)
    customers.register(blueprint)
    plans.register(blueprint)
    assign.register(blueprint)
    background.register(blueprint)
    bills.register(blueprint)
