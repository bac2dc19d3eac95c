"""Additional Charges and the charges of billing groups: create, edit, delete when never
assigned; add to a group with amount and dates, end or remove. Pages and CLI share these."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit
from ..catalog.names import DuplicateName, check_name, conflict_message
from ..engine.store import is_conflict
from ..i18n import M_
from ..models import AdditionalCharge, BillingGroup, ChargeAssignment, Invoice
from ..state import get_state

__all__ = [
    "ChargeInput",
    "ChargeInputError",
    "GroupChargeRow",
    "add_group_charge",
    "create_charge",
    "delete_charge",
    "end_group_charge",
    "group_charges",
    "parse_amount",
    "remove_group_charge",
    "update_charge",
]

# Numeric(12, 2): ten digits before the point.
AMOUNT_LIMIT = Decimal(10) ** 10


class ChargeInputError(ValueError):
    """Input that cannot be saved: ``errors`` maps each field to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class ChargeInput:
    name: str
    default_amount: Decimal
    description: str = ""
    is_recurring: bool = False
    is_proratable: bool = False


def parse_amount(text: str | Decimal | None) -> Decimal:
    """An amount as typed ("-100", "19.95"); ValueError with the words to show."""
    if isinstance(text, Decimal):
        value = text
    else:
        try:
            value = Decimal(str(text or "").strip())
        except InvalidOperation:
            raise ValueError(M_("Enter an amount like 19.95 (negative for a credit).")) from None
    if not value.is_finite():
        raise ValueError(M_("Enter an amount like 19.95 (negative for a credit)."))
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise ValueError(M_("Use at most 2 decimal places."))
    if abs(value) >= AMOUNT_LIMIT:
        raise ValueError(M_("Enter an amount between -%(limit)s and %(limit)s.")
                         % {"limit": AMOUNT_LIMIT})
    return value.quantize(Decimal("0.01"))


def _validate(data: ChargeInput) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    name = data.name.strip()
    if not name:
        errors["name"] = ["Enter the charge's name."]
    elif len(name) > 200:
        errors["name"] = ["Use at most 200 characters."]
    if len(data.description) > 10_000:
        errors["description"] = ["Use at most 10000 characters."]
    try:
        parse_amount(data.default_amount)
    except ValueError as exc:
        errors["default_amount"] = [str(exc)]
    if data.is_proratable and not data.is_recurring:
        errors["is_proratable"] = [
            "Only a recurring charge can be prorated: tick Is Recurring? too, or untick this."
        ]
    return errors


def _save(session: Session, kind: str, field_name: str) -> None:
    """Commit; the unique key refusing a name saved meanwhile is a field error."""
    try:
        session.commit()
    except sa.exc.DBAPIError as exc:
        session.rollback()
        if not is_conflict(exc):
            raise
        raise ChargeInputError({field_name: [conflict_message(kind)]}) from None


def _fields(data: ChargeInput) -> dict[str, Any]:
    return {
        "name": data.name.strip(),
        "description": data.description,
        "default_amount": parse_amount(data.default_amount),
        "is_recurring": data.is_recurring,
        "is_proratable": data.is_proratable,
    }


def create_charge(data: ChargeInput, *, actor: str) -> AdditionalCharge:
    """Create an Additional Charge. Raises ChargeInputError (each field's messages)."""
    session = get_state().session
    errors = _validate(data)
    if "name" not in errors:
        try:
            check_name(session, "charge", data.name)
        except DuplicateName as exc:
            errors["name"] = [str(exc)]
    if errors:
        raise ChargeInputError(errors)
    charge = AdditionalCharge(**_fields(data))
    session.add(charge)
    try:
        session.flush()
    except sa.exc.DBAPIError as exc:
        session.rollback()
        if not is_conflict(exc):
            raise
        raise ChargeInputError({"name": [conflict_message("charge")]}) from None
    audit.record(session, actor=actor, action="charge_create", object_type="charge",
                 object_id=charge.id, detail=_jsonable(_fields(data)))
    _save(session, "charge", "name")
    return charge


def update_charge(charge_id: int, data: ChargeInput, *, actor: str) -> dict[str, list[Any]]:
    """Save an edited charge; returns what changed ({field: [old, new]})."""
    session = get_state().session
    charge = session.get(AdditionalCharge, charge_id)
    if charge is None:
        raise LookupError(f"there is no additional charge {charge_id}")
    errors = _validate(data)
    if "name" not in errors:
        try:
            check_name(session, "charge", data.name, exclude_id=charge_id)
        except DuplicateName as exc:
            errors["name"] = [str(exc)]
    if errors:
        raise ChargeInputError(errors)
    changes: dict[str, list[Any]] = {}
    for key, new in _fields(data).items():
        old = getattr(charge, key)
        if old != new:
            changes[key] = [_plain(old), _plain(new)]
            setattr(charge, key, new)
    if changes:
        audit.record(session, actor=actor, action="charge_update", object_type="charge",
                     object_id=charge.id, detail=changes)
        _save(session, "charge", "name")
    return changes


class ChargeInUse(ValueError):
    """A charge some group pays (or paid): it is kept for their billing history."""


def delete_charge(charge_id: int, *, actor: str) -> str:
    """Delete a charge never assigned to a group; returns its name. Raises ChargeInUse."""
    session = get_state().session
    charge = session.get(AdditionalCharge, charge_id)
    if charge is None:
        raise LookupError(f"there is no additional charge {charge_id}")
    used = session.scalar(
        sa.select(sa.func.count(ChargeAssignment.id)).where(ChargeAssignment.charge_id == charge_id)
    ) or 0
    if used:
        raise ChargeInUse(
            M_("%(charge)s is assigned to %(count)s billing group(s), so billing history "
               "needs it: end it on those groups instead (customer page, group's charges, "
               "End), or give it a new name.") % {"charge": charge.name, "count": used}
        )
    name = charge.name
    session.delete(charge)
    audit.record(session, actor=actor, action="charge_delete", object_type="charge",
                 object_id=charge_id, detail={"name": name})
    try:
        session.commit()
    except sa.exc.DBAPIError as exc:
        # Assigned by someone else between the count and the delete (foreign key).
        session.rollback()
        if not is_conflict(exc):
            raise
        raise ChargeInUse(M_("%(charge)s was just assigned to a billing group: it is kept.")
                          % {"charge": name}) from None
    return name


# --- A group's charges -----------------------------------------------------------------------


@dataclass
class GroupChargeRow:
    id: int
    group_id: int
    charge_id: int
    name: str
    amount: Decimal
    is_default_amount: bool
    start_date: date
    end_date: date | None
    description: str
    is_recurring: bool
    is_proratable: bool
    billed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def group_charges(session: Session, group_ids: list[int]) -> dict[int, list[GroupChargeRow]]:
    """Each group's charges (ended ones too), in one query."""
    out: dict[int, list[GroupChargeRow]] = {gid: [] for gid in group_ids}
    if not group_ids:
        return out
    rows = session.execute(
        sa.select(ChargeAssignment, AdditionalCharge)
        .join(AdditionalCharge, AdditionalCharge.id == ChargeAssignment.charge_id)
        .where(ChargeAssignment.group_id.in_(group_ids))
        .order_by(ChargeAssignment.start_date, ChargeAssignment.id)
    ).all()
    for ca, charge in rows:
        out[ca.group_id].append(GroupChargeRow(
            id=ca.id, group_id=ca.group_id, charge_id=charge.id, name=charge.name,
            amount=ca.amount if ca.amount is not None else charge.default_amount,
            is_default_amount=ca.amount is None, start_date=ca.start_date,
            end_date=ca.end_date, description=ca.description or charge.description,
            is_recurring=charge.is_recurring, is_proratable=charge.is_proratable,
            billed=ca.invoice_id is not None,
        ))
    return out


def add_group_charge(
    group_id: int,
    charge_id: int,
    *,
    start: date | None,
    end: date | None = None,
    amount: Decimal | str | None = None,
    description: str = "",
    actor: str,
) -> ChargeAssignment:
    """"Add Additional Charge" to a billing group; amount None = the charge's default.

    Start and End Date are both billed (End Date is the last day billed, as compute's
    ChargeTerm reads it; None = open). Raises ChargeInputError (each field's messages).
    """
    session = get_state().session
    errors: dict[str, list[str]] = {}
    group = session.get(BillingGroup, group_id)
    if group is None:
        errors["group_id"] = ["There is no such billing group."]
    charge = session.get(AdditionalCharge, charge_id)
    if charge is None:
        errors["charge_id"] = ["Choose an additional charge."]
    value: Decimal | None = None
    if amount is not None and str(amount).strip() != "":
        try:
            value = parse_amount(amount)
        except ValueError as exc:
            errors["amount"] = [str(exc)]
    if start is None:
        errors["start_date"] = ["Enter the start date (YYYY-MM-DD)."]
    elif end is not None and end < start:
        errors["end_date"] = ["The end date must not be before the start date."]
    if len(description) > 10_000:
        errors["description"] = ["Use at most 10000 characters."]
    if errors:
        raise ChargeInputError(errors)
    assert start is not None and group is not None and charge is not None
    row = ChargeAssignment(group_id=group_id, charge_id=charge_id, amount=value,
                           start_date=start, end_date=end, description=description)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="group_charge_add", object_type="group",
                 object_id=group_id,
                 detail={"charge_id": charge_id, "charge": charge.name, "group_charge_id": row.id,
                         "amount": _plain(value), "start": start.isoformat(),
                         "end": end.isoformat() if end else None})
    session.commit()
    return row


def end_group_charge(group_charge_id: int, *, end: date | None, actor: str) -> ChargeAssignment:
    """End a group's charge: ``end`` (today) is the last day billed."""
    session = get_state().session
    row = session.get(ChargeAssignment, group_charge_id)
    if row is None:
        raise LookupError(f"there is no group charge {group_charge_id}")
    end = end or get_state().settings.billing_today()
    if end < row.start_date:
        raise ChargeInputError({"end": [
            M_("The end date must not be before the start date %(start)s.")
            % {"start": row.start_date.isoformat()}]})
    old = row.end_date
    row.end_date = end
    audit.record(session, actor=actor, action="group_charge_end", object_type="group",
                 object_id=row.group_id,
                 detail={"group_charge_id": row.id, "end": [_plain(old), end.isoformat()]})
    session.commit()
    return row


def remove_group_charge(group_charge_id: int, *, actor: str) -> None:
    """Remove a group's charge that no invoice has billed yet (a mistake); a billed one
    must be ended instead, so its invoices keep their meaning. Raises ChargeInUse."""
    session = get_state().session
    row = session.get(ChargeAssignment, group_charge_id)
    if row is None:
        raise LookupError(f"there is no group charge {group_charge_id}")
    group = session.get(BillingGroup, row.group_id)
    assert group is not None
    # A recurring charge records no invoice: any non-void invoice of the customer for a
    # period since its start may have billed it.
    billed = row.invoice_id is not None or session.scalar(
        sa.select(sa.func.count(Invoice.id)).where(
            Invoice.customer_id == group.customer_id,
            Invoice.status != "void",
            Invoice.period_end >= row.start_date,
            *([Invoice.period_start <= row.end_date] if row.end_date else []),
        )
    )
    if billed:
        raise ChargeInUse(
            M_("This charge may be on an invoice already: End it instead (the history is "
               "kept).")
        )
    detail = {"group_charge_id": row.id, "charge_id": row.charge_id,
              "start": row.start_date.isoformat()}
    session.delete(row)
    audit.record(session, actor=actor, action="group_charge_remove", object_type="group",
                 object_id=group.id, detail=detail)
    session.commit()


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in values.items()}
