"""Digests that let a run of an unchanged server skip the comparison (speed, issue 15).

reconcile is pure: the same inventory and the same billing snapshot give the same problems
and changes. So a run may reuse its server's last result when (1) the digest of what the
server reported and of billing's snapshot (loaded as always, so every billing change is in
it, whoever made it) equals the one stored with that result, and (2) the server's open
problems read back are exactly the rows that result left (nobody closed, reopened, edited or
deleted one since). When unsure, the digests differ and the run compares as usual.

A validate of a server that changed while billing did not reuses only the billing rules'
result (their half of each digest) and compares just the server's side (drift).
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

from .reconcile import RULE_KINDS, BillingSnapshot

__all__ = [
    "billing_half",
    "inputs_digest",
    "inventory_digest",
    "result_digest",
    "rules_digest",
    "snapshot_digest",
    "with_drift",
]


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


def snapshot_digest(snapshot: BillingSnapshot, today: date) -> str:
    """Billing's snapshot (rows in id order) with the day: all the billing rules read."""
    parts = (
        today.isoformat(), snapshot.server_id, snapshot.server_name,
        sorted(_rows(snapshot.sites)), sorted(_rows(snapshot.lists)),
        sorted(_rows(snapshot.assignments)),
        sorted(snapshot.groups.items()), sorted(snapshot.elsewhere.items()),
    )
    return _digest(parts)


# A stored digest is two halves of 128 bits each (the columns hold 64 hex digits): the
# whole input or result, then the part the billing rules depend on. A validate whose server
# changed but whose billing did not (the 1 % case) reuses the rules' half: same snapshot,
# same rule problems (reconcile.rule_problems reads nothing else), when those rows are
# still as that run left them.
_HALF = 32


def inputs_digest(inventory: str, snapshot: BillingSnapshot, today: date) -> str:
    """The inventory's digest with billing's snapshot; its second half is the snapshot's."""
    billing = snapshot_digest(snapshot, today)
    both = hashlib.sha256(f"{inventory}:{billing}".encode("ascii")).hexdigest()
    return both[:_HALF] + billing[:_HALF]


def billing_half(digest: str) -> str:
    """The rules' half of a stored inputs or result digest ("" for one of another form)."""
    return digest[_HALF:] if len(digest) == 2 * _HALF else ""


def _ordered(rows: Iterable[tuple[int | None, str, str, str]]
             ) -> list[tuple[int | None, str, str, str]]:
    return sorted(rows, key=lambda r: (r[0] is None, r[0] or 0))


def rules_digest(rows: Iterable[tuple[int | None, str, str, str]]) -> str:
    """The rules' half of a result: its rows of the billing-rule kinds, in id order."""
    return _digest(_ordered(r for r in rows if r[1] in RULE_KINDS))[:_HALF]


def result_digest(rows: Iterable[tuple[int | None, str, str, str]]) -> str:
    """The open problems a result left: (id, kind, object name, detail), in id order; its
    second half covers the rows of the billing-rule kinds only. Each row is pickled once:
    the first half joins the digests of the other rows and of the rules' rows (the split by
    kind of rows in id order is fixed, so equal halves mean equal rows)."""
    ordered = _ordered(rows)
    rules = _digest([r for r in ordered if r[1] in RULE_KINDS])
    others = _digest([r for r in ordered if r[1] not in RULE_KINDS])
    both = hashlib.sha256(f"{others}:{rules}".encode("ascii")).hexdigest()
    return both[:_HALF] + rules[:_HALF]


def with_drift(inputs: str) -> str:
    """The inputs digest of a result that left drift (billing differs from the server): a
    validate may reuse it, a sync must not (it has changes to apply). The billing half
    stays: the rules' result does not depend on drift."""
    head = hashlib.sha256(f"{inputs}:drift".encode("ascii")).hexdigest()[:_HALF]
    return head + inputs[_HALF:]
