"""`flask lm-billing customers add | plans add | groups add | groups plan | assign`: the catalog
from the command line, through the same service functions as the pages (catalog/), so names
are unique the same way (catalog.names: case and spaces ignored). The one `groups` group is
defined here; cli/charges.py adds `groups charge` to it."""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

import click
import sqlalchemy as sa

from ..catalog.assignment import AssignmentError, GateError, assign
from ..catalog.customers import CatalogError, create_customer
from ..catalog.groups import create_group, find_customer, find_group, set_group_plan
from ..catalog.plans import find_plan, save_plan
from ..models import MailingList, Server, Site
from ..state import get_state
from . import cli
from .output import EXIT_OK, actor, echo, emit_json, fail

PAYMENT_METHODS = {"invoice": "Invoice", "free": "Free", "credit-card": "Credit Card"}
DATE = click.DateTime(formats=["%Y-%m-%d"])


def _day(value: Any) -> date | None:
    return value.date() if value is not None else None


def _money(text: str | None, option: str) -> Decimal:
    if text is None:
        return Decimal("0")
    try:
        value = Decimal(text)
    except InvalidOperation:
        fail(f"{option} must be a decimal amount like 19.95, not {text!r}")
    if not value.is_finite() or value < 0:
        fail(f"{option} must be 0 or more, not {text!r}")
    return value


def _customer(key: str) -> Any:
    found = find_customer(get_state().session, key)
    if found is None:
        fail(f"there is no customer {key!r}; `flask lm-billing customers add` creates one")
    return found


@cli.group("customers")
def customers_group() -> None:
    """Customers: add (the pages' Customers: New does the same)."""


@customers_group.command("add")
@click.option("--company", required=True, help="Company name.")
@click.option("--email", required=True, help="Where bills are sent.")
@click.option("--contact", default="", help="Contact Name.")
@click.option("--payment-method", type=click.Choice(sorted(PAYMENT_METHODS)), default="invoice",
              show_default=True, help='"Free" customers are never billed.')
@click.option("--start-date", type=DATE, help="First day billed (YYYY-MM-DD).")
@click.option("--end-date", type=DATE, help="Last day billed: its final bill (YYYY-MM-DD).")
@click.option("--inactive", is_flag=True, help="Create it inactive.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def customers_add(company: str, email: str, contact: str, payment_method: str,
                  start_date: Any, end_date: Any, inactive: bool, as_json: bool) -> None:
    """Add a customer."""
    try:
        customer = create_customer({
            "company": company.strip(), "email": email.strip(), "contact_name": contact.strip(),
            "payment_method": PAYMENT_METHODS[payment_method], "is_active": not inactive,
            "start_date": _day(start_date), "end_date": _day(end_date)}, actor=actor())
    except CatalogError as exc:
        fail(str(exc))
    if as_json:
        emit_json({"id": customer.id, "company": customer.company, "email": customer.email,
                   "payment_method": customer.payment_method, "is_active": customer.is_active})
    else:
        echo(f"Customer {customer.company} added (id {customer.id}).")


@cli.group("plans")
def plans_group() -> None:
    """Hosting plans: add (the pages' Hosting Plans: New does the same)."""


@plans_group.command("add")
@click.option("--name", required=True)
@click.option("--method", type=click.Choice(["standard", "bandwidth"]), default="standard",
              show_default=True, help="Billing Method.")
@click.option("--monthly-price", metavar="X")
@click.option("--included-messages", type=click.IntRange(min=0), default=0)
@click.option("--overage-cpm", metavar="X", help="Price per thousand units over the included.")
@click.option("--max-message-size-kb", type=click.IntRange(min=0), default=0)
@click.option("--bill-by-list", is_flag=True)
@click.option("--price-per-server", metavar="X", help="Bandwidth: Monthly Price Per Server.")
@click.option("--cost-per-gb", metavar="X")
@click.option("--included-gb", metavar="X")
@click.option("--max-lists", type=click.IntRange(min=0), default=0, help="0 = unlimited.")
@click.option("--max-members", type=click.IntRange(min=0), default=0, help="0 = unlimited.")
@click.option("--max-sites", type=click.IntRange(min=0), default=0, help="0 = unlimited.")
@click.option("--json", "as_json", is_flag=True)
def plans_add(name: str, method: str, monthly_price: str | None, included_messages: int,
              overage_cpm: str | None, max_message_size_kb: int, bill_by_list: bool,
              price_per_server: str | None, cost_per_gb: str | None, included_gb: str | None,
              max_lists: int, max_members: int, max_sites: int, as_json: bool) -> None:
    """Add a hosting plan."""
    values = {
        "name": name.strip(), "billing_method": method, "bill_by_list": bill_by_list,
        "monthly_price": _money(monthly_price, "--monthly-price"),
        "included_messages": included_messages,
        "overage_cpm": _money(overage_cpm, "--overage-cpm"),
        "max_message_size_kb": max_message_size_kb,
        "monthly_price_per_server": _money(price_per_server, "--price-per-server"),
        "cost_per_gb": _money(cost_per_gb, "--cost-per-gb"),
        "included_gb": _money(included_gb, "--included-gb"),
        "max_lists": max_lists, "max_members": max_members, "max_sites": max_sites,
    }
    try:
        plan, _changes = save_plan(None, values, actor=actor())
    except CatalogError as exc:
        fail(str(exc))
    if as_json:
        emit_json({"id": plan.id, "name": plan.name, "method": plan.billing_method,
                   "monthly_price": f"{plan.monthly_price:.2f}"})
    else:
        echo(f"Hosting plan {plan.name} added (id {plan.id}).")


@cli.group("groups")
def groups_group() -> None:
    """Billing groups: add, give a group a hosting plan over time, and add an Additional
    Charge to it (cli/charges.py registers `charge` here).

    Exit status: 0 = done; 2 = invalid input (the error is printed).
    """


@groups_group.command("add")
@click.option("--customer", "customer_key", required=True, help="Company name or id.")
@click.option("--name", required=True)
@click.option("--json", "as_json", is_flag=True)
def groups_add(customer_key: str, name: str, as_json: bool) -> None:
    """Add a billing group to a customer."""
    customer = _customer(customer_key)
    try:
        group = create_group(customer, {"name": name.strip()}, actor=actor())
    except CatalogError as exc:
        fail(str(exc))
    if as_json:
        emit_json({"id": group.id, "customer": customer.company, "name": group.name})
    else:
        echo(f"Billing group {group.name} added to {customer.company} (id {group.id}).")


@groups_group.command("plan")
@click.option("--customer", "customer_key", required=True, help="Company name or id.")
@click.option("--group", "group_name", required=True)
@click.option("--plan", "plan_key", required=True, help="Hosting plan name or id.")
@click.option("--start", type=DATE, required=True, help="First day of the plan (YYYY-MM-DD).")
@click.option("--end", type=DATE, help="Last day of the plan (YYYY-MM-DD); blank = open.")
def groups_plan(customer_key: str, group_name: str, plan_key: str, start: Any,
                end: Any) -> None:
    """Give a billing group a hosting plan from --start (the term in force then ends the day
    before): the plan history billing reads."""
    session = get_state().session
    customer = _customer(customer_key)
    group = find_group(session, customer.id, group_name)
    if group is None:
        fail(f"customer {customer.company} has no billing group {group_name!r}; "
             "`flask lm-billing groups add` creates one")
    plan = find_plan(session, plan_key)
    if plan is None:
        fail(f"there is no hosting plan {plan_key!r}; `flask lm-billing plans add` creates one")
    try:
        # The plan starts today where billing days start (LM_BILLING_BILLING_TIMEZONE).
        start_day = _day(start) or get_state().settings.billing_today()
        set_group_plan(group, plan.id, start_day, _day(end), actor=actor())
    except CatalogError as exc:
        fail(str(exc))
    echo(f"Group {group.name} of {customer.company}: plan {plan.name} from "
         f"{_day(start)}" + (f" to {_day(end)}." if end else "."))


@cli.command("assign")
@click.option("--customer", "customer_key", required=True, help="Company name or id.")
@click.option("--group", "group_name", required=True)
@click.option("--server", "server_name", required=True)
@click.option("--list", "list_names", multiple=True, metavar="L", help="A list (repeatable).")
@click.option("--site", "site_names", multiple=True, metavar="S", help="A site (repeatable).")
@click.option("--whole-server", is_flag=True, help="Every list on the server.")
@click.option("--start", type=DATE, help="First day billed (YYYY-MM-DD); blank = today.")
@click.option("--end", type=DATE, help="First day no longer billed (YYYY-MM-DD).")
@click.option("--free", is_flag=True, help='Mark them "Is Free": they cost nothing.')
def assign_command(customer_key: str, group_name: str, server_name: str,
                   list_names: tuple[str, ...], site_names: tuple[str, ...], whole_server: bool,
                   start: Any, end: Any, free: bool) -> None:
    """Assign lists, sites or a whole server to a billing group (behind the validate-and-sync
    gate, like the Assign page)."""
    session = get_state().session
    customer = _customer(customer_key)
    group = find_group(session, customer.id, group_name)
    if group is None:
        fail(f"customer {customer.company} has no billing group {group_name!r}")
    server_id = session.scalar(sa.select(Server.id).where(Server.name == server_name))
    if server_id is None:
        fail(f"there is no server {server_name!r}; `flask lm-billing servers list` shows them")
    list_ids = _ids(MailingList, server_id, list_names, "list")
    site_ids = _ids(Site, server_id, site_names, "site")
    try:
        created = assign(group.id, server_id=server_id, list_ids=list_ids, site_ids=site_ids,
                         whole_server=whole_server, actor=actor(), start=_day(start),
                         end=_day(end), is_free=free)
    except (GateError, AssignmentError) as exc:
        fail(str(exc))
    echo(f"{created} assignment(s) created for group {group.name} of {customer.company}.")
    raise SystemExit(EXIT_OK)


def _ids(model: Any, server_id: int, names: tuple[str, ...], what: str) -> list[int]:
    if not names:
        return []
    rows: dict[str, int] = {name: oid for name, oid in get_state().session.execute(
        sa.select(model.name, model.id).where(model.server_id == server_id,
                                              model.name.in_(sorted(set(names)))))}
    missing = sorted(set(names) - set(rows))
    if missing:
        fail(f"no {what}(s) {missing} on this server in billing; sync the server first if "
             "they are new")
    return [rows[n] for n in names]
