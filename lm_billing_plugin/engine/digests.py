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
import io
import pickle
from collections.abc import Iterable
from dataclasses import fields
from datetime import date
from operator import attrgetter
from typing import Any

from .reconcile import BillingSnapshot

__all__ = ["inputs_digest", "inventory_digest", "result_digest", "with_drift"]


def _digest(value: Any) -> str:
    """sha256 of ``value`` pickled without the memo (so equal values give equal bytes
    whether or not equal strings are one object): C speed, unlike repr of many tuples."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    pickler.fast = True
    pickler.dump(value)
    return hashlib.sha256(buffer.getbuffer()).hexdigest()


def _rows(items: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Dataclass rows as plain tuples of every field (cheap to pickle)."""
    items = list(items)
    if not items:
        return []
    get = attrgetter(*(f.name for f in fields(items[0])))
    return [get(item) for item in items]


def inventory_digest(inventory: Any) -> str:
    """What reconcile reads of an :class:`~lm_billing_plugin.engine.inventory.Inventory`:
    sites, lists, logging and the usage error (computed in the fetch thread)."""
    return _digest((_rows(inventory.sites), _rows(inventory.lists), inventory.logging,
                    getattr(inventory, "usage_error", None)))


def inputs_digest(inventory: str, snapshot: BillingSnapshot, today: date) -> str:
    """The inventory's digest with billing's snapshot (rows in id order) and the day."""
    parts = (
        inventory, today.isoformat(), snapshot.server_id, snapshot.server_name,
        sorted(_rows(snapshot.sites)), sorted(_rows(snapshot.lists)),
        sorted(_rows(snapshot.assignments)),
        sorted(snapshot.groups.items()), sorted(snapshot.elsewhere.items()),
    )
    return _digest(parts)


def result_digest(rows: Iterable[tuple[int | None, str, str, str]]) -> str:
    """The open problems a result left: (id, kind, object name, detail), in id order."""
    ordered = sorted(rows, key=lambda r: (r[0] is None, r[0] or 0))
    return _digest(ordered)


def with_drift(inputs: str) -> str:
    """The inputs digest of a result that left drift (billing differs from the server): a
    validate may reuse it, a sync must not (it has changes to apply)."""
    return hashlib.sha256(f"{inputs}:drift".encode("ascii")).hexdigest()
