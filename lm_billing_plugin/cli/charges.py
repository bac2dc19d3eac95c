"""`flask lm-billing charges add` and `flask lm-billing groups charge`: Additional Charges and
a billing group's charges from the command line, through billing.charges like the pages."""

from __future__ import annotations

import sys
from datetime import date
from typing import NoReturn

import click
import sqlalchemy as sa

from ..billing import charges as service
from ..models import AdditionalCharge, BillingGroup, Customer, name_key
from ..state import get_state
from . import cli
from .catalog import groups_group
from .output import EXIT_FAILED, EXIT_OK, actor, echo, emit_json

# Service field -> the option a command-line user typed it with.
_OPTION = {
    "name": "--name",
    "default_amount": "--amount",
    "description": "--description",
    "is_proratable": "--proratable",
    "amount": "--amount",
    "start_date": "--start",
    "end_date": "--end",
    "customer": "--customer",
    "group_id": "--group",
    "charge_id": "--charge",
}


def _field_errors(errors: dict[str, list[str]]) -> NoReturn:
    """Each field's error on stderr, then exit 2 (bad input)."""
    for field_name, messages in errors.items():
        for message in messages:
            echo(f"Error: {_OPTION.get(field_name, field_name)}: {message}", err=True)
    sys.exit(EXIT_FAILED)


def _date(value: str | None, option: str, errors: dict[str, list[str]]) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors.setdefault(option, []).append(f"{value!r} is not a date (YYYY-MM-DD).")
        return None


@cli.group("charges")
def charges_group() -> None:
    """Additional Charges: add.

    Exit status: 0 = done; 2 = invalid input (each field's error is printed).
    """


@charges_group.command("add")
@click.option("--name", required=True, help="The charge's name (unique, ignoring case/spaces).")
@click.option("--amount", required=True, help="Default Amount, e.g. 19.95; negative = credit.")
@click.option("--description", default="", help="Shown on the invoice.")
@click.option("--recurring", is_flag=True, help="Is Recurring? (billed every period).")
@click.option("--proratable", is_flag=True, help="Is Proratable? (recurring charges only).")
@click.option("--json", "as_json", is_flag=True, help="Print the charge as JSON.")
def charges_add(name: str, amount: str, description: str, recurring: bool, proratable: bool,
                as_json: bool) -> None:
    """Create an Additional Charge."""
    try:
        value = service.parse_amount(amount)
    except ValueError as exc:
        _field_errors({"default_amount": [str(exc)]})
    data = service.ChargeInput(name=name, default_amount=value, description=description,
                               is_recurring=recurring, is_proratable=proratable)
    try:
        charge = service.create_charge(data, actor=actor())
    except service.ChargeInputError as exc:
        _field_errors(exc.errors)
    document = {"id": charge.id, "name": charge.name, "default_amount": str(charge.default_amount),
                "is_recurring": charge.is_recurring, "is_proratable": charge.is_proratable}
    if as_json:
        emit_json(document)
    else:
        echo(f"Additional charge {charge.name} created (id {charge.id}, default amount "
             f"{charge.default_amount}).")
    sys.exit(EXIT_OK)


# One `groups` group (cli/catalog.py: groups add, groups plan); `charge` is registered on it.
@groups_group.command("charge")
@click.option("--customer", required=True, help="The customer's Company.")
@click.option("--group", "group_name", required=True, help="The billing group's name.")
@click.option("--charge", "charge_name", required=True, help="The Additional Charge's name.")
@click.option("--amount", default=None, help="Amount; default = the charge's Default Amount.")
@click.option("--start", required=True, help="Start Date, YYYY-MM-DD (the first day billed).")
@click.option("--end", default=None, help="End Date, YYYY-MM-DD (the last day billed).")
@click.option("--description", default="", help="Shown on the invoice.")
@click.option("--json", "as_json", is_flag=True, help="Print the group charge as JSON.")
def groups_charge(customer: str, group_name: str, charge_name: str, amount: str | None,
                  start: str, end: str | None, description: str, as_json: bool) -> None:
    """Add an Additional Charge to a customer's billing group."""
    session = get_state().session
    errors: dict[str, list[str]] = {}
    start_day = _date(start, "start_date", errors)
    end_day = _date(end, "end_date", errors)
    # Names are matched like the pages keep them unique: ignoring case and spaces.
    customer_id = session.scalar(
        sa.select(Customer.id).where(Customer.company_key == name_key(customer)))
    group_id = None
    if customer_id is None:
        errors["customer"] = [f"there is no customer {customer!r}"]
    else:
        group_id = session.scalar(sa.select(BillingGroup.id).where(
            BillingGroup.customer_id == customer_id,
            BillingGroup.name_key == name_key(group_name)))
        if group_id is None:
            errors["group_id"] = [f"{customer!r} has no billing group {group_name!r}"]
    charge_id = session.scalar(
        sa.select(AdditionalCharge.id).where(AdditionalCharge.name_key == name_key(charge_name)))
    if charge_id is None:
        errors["charge_id"] = [f"there is no additional charge {charge_name!r}"]
    if errors:
        _field_errors(errors)
    assert group_id is not None and charge_id is not None
    try:
        row = service.add_group_charge(group_id, charge_id, start=start_day, end=end_day,
                                       amount=amount, description=description, actor=actor())
    except service.ChargeInputError as exc:
        _field_errors(exc.errors)
    document = {"id": row.id, "group_id": row.group_id, "charge_id": row.charge_id,
                "amount": None if row.amount is None else str(row.amount),
                "start": row.start_date.isoformat(),
                "end": row.end_date.isoformat() if row.end_date else None}
    if as_json:
        emit_json(document)
    else:
        echo(f"Additional charge {charge_name} added to {customer}: {group_name} from "
             f"{row.start_date.isoformat()}.")
    sys.exit(EXIT_OK)
