"""Blinker signals for every state change a host may react to (servers, runs, fixes, logging,
assignments, bills); the services send them after their transaction committed. Sender: the app."""

from __future__ import annotations

import logging
from typing import Any

from blinker import NamedSignal, Namespace
from flask import current_app

log = logging.getLogger("lm_billing_plugin.signals")

_signals = Namespace()

#: kwargs ``server_id``, ``name``, ``actor``.
server_created = _signals.signal("lm-billing-server-created")
#: kwargs ``server_id``, ``name``, ``changes`` (field -> {"old", "new"}; a password change is
#: only named, never shown), ``actor``.
server_updated = _signals.signal("lm-billing-server-updated")
#: kwargs ``server_id``, ``name``, ``outcome`` ("erased" or "deactivated"), ``actor``.
server_deleted = _signals.signal("lm-billing-server-deleted")
#: One per server of a validate batch: kwargs ``server_id``, ``name``, ``ok``, ``status``,
#: ``run_id``, ``batch_id``, ``problems_open``, ``problems_new``, ``actor``.
server_validated = _signals.signal("lm-billing-server-validated")
#: One per server of a sync batch (not a dry run): as ``server_validated``, plus ``changes``
#: ({"created", "updated", "removed"}).
server_synced = _signals.signal("lm-billing-server-synced")
#: After a fix that fixed something: kwargs ``problem_ids`` (those fixed), ``changes``
#: (server name -> counts), ``actor``.
problems_fixed = _signals.signal("lm-billing-problems-fixed")
#: Enable Logging switched on (the button, `servers enable-logging`, or a fix with
#: enable_logging): kwargs ``server_id``, ``actor``.
logging_enabled = _signals.signal("lm-billing-logging-enabled")
#: kwargs ``group_id``, ``server_id``, ``created`` (count), ``site_ids``, ``list_ids``,
#: ``whole_server``, ``start`` (date), ``actor``.
assigned = _signals.signal("lm-billing-assigned")
#: kwargs ``assignment_ids``, ``ended`` (count), ``end`` (date), ``actor``.
unassigned = _signals.signal("lm-billing-unassigned")
#: Once per bill run (not a dry run) that stored at least one invoice, when it finished:
#: kwargs ``run_id``, ``invoice_ids`` (those it stored, in its customers' order), ``start``,
#: ``end`` (the period, dates), ``actor``.
bills_issued = _signals.signal("lm-billing-bills-issued")
#: kwargs ``invoice_id``, ``number``, ``reason``, ``actor``.
bill_voided = _signals.signal("lm-billing-bill-voided")
#: An invoice was emailed to its customer (a real send, not a test; "partial" included):
#: kwargs ``invoice_id``, ``number``, ``to`` (the addresses the mail server accepted),
#: ``refused`` (those it refused), ``actor``.
bill_sent = _signals.signal("lm-billing-bill-sent")

SIGNALS: tuple[NamedSignal, ...] = (
    server_created, server_updated, server_deleted, server_validated, server_synced,
    problems_fixed, logging_enabled, assigned, unassigned, bills_issued, bill_voided, bill_sent,
)


def send(signal: NamedSignal, **kwargs: Any) -> None:
    """Send ``signal`` from the current app. The change is committed already, so a receiver
    that raises is logged and neither undoes it nor keeps the other receivers from hearing."""
    if not signal.receivers:
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    for receiver in list(signal.receivers_for(app)):
        try:
            receiver(app, **kwargs)
        except Exception:
            log.exception("a receiver of lm_billing_plugin.signals.%s failed", signal.name)


__all__ = [
    "SIGNALS",
    "assigned",
    "bill_sent",
    "bill_voided",
    "bills_issued",
    "logging_enabled",
    "problems_fixed",
    "send",
    "server_created",
    "server_deleted",
    "server_synced",
    "server_updated",
    "server_validated",
    "unassigned",
]
