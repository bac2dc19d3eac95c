"""The Billing pages, one module per subject, all on the lm_billing blueprint."""

from __future__ import annotations

from flask import Blueprint


def register(blueprint: Blueprint) -> None:
    from . import background, catalog, problems, runs, servers

    servers.register(blueprint)
    problems.register(blueprint)
    runs.register(blueprint)
    catalog.register(blueprint)
    background.register(blueprint)
