"""The Billing pages, one module per subject, all on the lm_billing blueprint."""

from __future__ import annotations

from flask import Blueprint


def register(blueprint: Blueprint) -> None:
    from . import (
        assign,
        audit_log,
        background,
        bill_send,
        bills,
        charges,
        customers,
        groups,
        invoice_templates,
        overview,
        plans,
        problems,
        reports,
        runs,
        server_actions,
        servers,
        terminate,
        utilities,
    )

    overview.register(blueprint)
    servers.register(blueprint)
    server_actions.register(blueprint)
    problems.register(blueprint)
    runs.register(blueprint)
    customers.register(blueprint)
    plans.register(blueprint)
    assign.register(blueprint)
    background.register(blueprint)
    reports.register(blueprint)
    utilities.register(blueprint)
    charges.register(blueprint)
    invoice_templates.register(blueprint)
    terminate.register(blueprint)
    bills.register(blueprint)
    bill_send.register(blueprint)
    groups.register(blueprint)
    audit_log.register(blueprint)
