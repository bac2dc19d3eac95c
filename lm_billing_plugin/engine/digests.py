"""Digests that let a run of an unchanged server skip the comparison (speed, issue 15).

reconcile is pure: the same inventory and the same billing snapshot give the same problems
and changes. So a run may reuse its server's last result when (1) the digest of what the
server reported and of billing's snapshot (loaded as always, so every billing change is in
it, whoever made it) equals the one stored with that result, and (2) the server's open
problems read back are exactly the rows that result left (nobody closed, reopened, edited or
deleted one since). When unsure, the digests differ and the run compares as usual.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import date
from typing import Any

from .reconcile import BillingSnapshot

__all__ = ["inputs_digest", "inventory_digest", "result_digest"]


def inventory_digest(inventory: Any) -> str:
    """What reconcile reads of an :class:`~lm_billing_plugin.engine.inventory.Inventory`:
    sites, lists, logging and the usage error (computed in the fetch thread)."""
    text = repr((inventory.sites, inventory.lists, inventory.logging,
                 getattr(inventory, "usage_error", None)))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def inputs_digest(inventory: str, snapshot: BillingSnapshot, today: date) -> str:
    """The inventory's digest with billing's snapshot (rows in id order) and the day."""
    parts = (
        inventory, today.isoformat(), snapshot.server_id, snapshot.server_name,
        sorted(snapshot.sites, key=lambda r: r.id),
        sorted(snapshot.lists, key=lambda r: r.id),
        sorted(snapshot.assignments, key=lambda r: r.id),
        sorted(snapshot.groups.items()), sorted(snapshot.elsewhere.items()),
    )
    return hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()


def result_digest(rows: Iterable[tuple[int | None, str, str, str]]) -> str:
    """The open problems a result left: (id, kind, object name, detail), in id order."""
    ordered = sorted(rows, key=lambda r: (r[0] is None, r[0] or 0))
    return hashlib.sha256(repr(ordered).encode("utf-8", "surrogatepass")).hexdigest()
