"""`flask lm-billing bills run | list | show | void | export`: Run Bills and the invoices from
the command line, through the same services as the pages (billing.runs, billing.invoices)."""

from __future__ import annotations

import sys
from typing import Any

import click
import sqlalchemy as sa

from ..billing.invoices import (
    EXPORT_FIELDS,
    InvoiceError,
    export_csv,
    find_invoice,
    invoice_document,
    invoice_lines,
    void_invoice,
)
from ..billing.runs import BillRunError, BillRunResult, bill_customers
from ..catalog.groups import find_customer
from ..models import Invoice
from ..state import get_state
from . import cli
from .output import EXIT_OK, actor, echo, emit_json, fail, table

DATE = click.DateTime(formats=["%Y-%m-%d"])
_EXIT_HELP = ("Exit status: 0 = done; 1 = some customers were skipped for a reason that "
              "needs action (server to validate, usage unreadable, no group or plan); "
              "2 = invalid input or failure.")


@cli.group("bills", epilog=_EXIT_HELP)
def bills_group() -> None:
    """Run Bills and the invoices: run, list, show, void, export."""


def _print_run(result: BillRunResult) -> None:
    p = result.period
    title = "Dry run" if result.dry_run else "Bill run"
    echo(f"{title} {result.run_id}: {p.start} to {p.end}")
    rows = []
    for o in result.outcomes:
        amount = f"{o.draft.total:.2f} {result.currency}" if o.draft is not None else ""
        status = {"invoiced": o.number or "", "dry_run": "dry run",
                  "already_billed": f"already billed ({o.number})"}.get(o.status, "skipped")
        rows.append([o.company, status, amount, o.reason if o.status == "skipped" else ""])
    echo(table(["Customer", "Invoice", "Amount", "Reason / what to do"], rows))


@bills_group.command("run", epilog=_EXIT_HELP)
@click.option("--start", type=DATE, required=True, help="Start Date (YYYY-MM-DD).")
@click.option("--end", type=DATE, required=True, help="End Date, inclusive (YYYY-MM-DD).")
@click.option("--customer", "customers", multiple=True, metavar="C",
              help="Only this customer (company name or id; repeatable). Default: all.")
@click.option("--dry-run", is_flag=True, help="Compute and show the invoices; store nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def bills_run(start: Any, end: Any, customers: tuple[str, ...], dry_run: bool,
              as_json: bool) -> None:
    """Bill customers for Start..End: one invoice per customer, stored whole or not at all;
    a period already billed reports "already billed" and creates nothing."""
    session = get_state().session
    ids: list[int] | None = None
    if customers:
        ids = []
        for key in customers:
            found = find_customer(session, key)
            if found is None:
                fail(f"there is no customer {key!r}")
            ids.append(found.id)
    try:
        result = bill_customers(start.date(), end.date(), ids, actor=actor(), dry_run=dry_run)
    except BillRunError as exc:
        fail(str(exc))
    if as_json:
        emit_json(result.to_json())
    else:
        _print_run(result)
    sys.exit(result.exit_code)


@bills_group.command("list")
@click.option("--customer", "customer_key", metavar="C", help="Only this customer.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bills_list(customer_key: str | None, limit: int, as_json: bool) -> None:
    """The latest invoices, newest first."""
    session = get_state().session
    query = sa.select(Invoice).order_by(Invoice.id.desc()).limit(limit)
    if customer_key:
        found = find_customer(session, customer_key)
        if found is None:
            fail(f"there is no customer {customer_key!r}")
        query = query.where(Invoice.customer_id == found.id)
    invoices = list(session.scalars(query))
    if as_json:
        emit_json({"invoices": [{
            "number": i.number, "customer": i.company, "start": i.period_start.isoformat(),
            "end": i.period_end.isoformat(), "currency": i.currency, "total": f"{i.total:.2f}",
            "status": i.status} for i in invoices]})
        return
    echo(table(["Number", "Customer", "Start", "End", "Total", "Status"],
               [[i.number, i.company, i.period_start, i.period_end,
                 f"{i.total:.2f} {i.currency}", i.status] for i in invoices]))


def _invoice(number: str) -> Invoice:
    found = find_invoice(get_state().session, number)
    if found is None:
        fail(f"there is no invoice {number!r}; `flask lm-billing bills list` shows the numbers")
    return found


@bills_group.command("show")
@click.argument("number")
@click.option("--json", "as_json", is_flag=True)
def bills_show(number: str, as_json: bool) -> None:
    """One invoice with its lines."""
    invoice = _invoice(number)
    doc = invoice_document(invoice, invoice_lines(get_state().session, invoice.id))
    if as_json:
        emit_json(doc)
        return
    echo(f"Invoice {doc['number']} ({doc['status']}): {doc['customer']}, {doc['start']} to "
         f"{doc['end']}")
    echo(table(["Group", "Description", "Quantity", "Unit price", "Amount"],
               [[li["group"], li["description"], li["quantity"], li["unit_price"],
                 li["amount"]] for li in doc["lines"]]))
    echo(f"Total: {doc['total']} {doc['currency']}")
    if invoice.status == "void":
        echo(f"Void: {invoice.void_reason} (by {invoice.voided_by}, {invoice.voided_at})")


@bills_group.command("void")
@click.argument("number")
@click.option("--reason", required=True, help="Why (kept with the invoice).")
@click.option("--json", "as_json", is_flag=True)
def bills_void(number: str, reason: str, as_json: bool) -> None:
    """Void an invoice (kept, with who, when and why); then `bills run` bills its period
    again."""
    try:
        invoice = void_invoice(number, reason=reason, actor=actor())
    except InvoiceError as exc:
        fail(str(exc))
    if as_json:
        emit_json({"number": invoice.number, "status": invoice.status,
                   "reason": invoice.void_reason, "voided_by": invoice.voided_by})
    else:
        echo(f"Invoice {invoice.number} is void. Run its period again with `flask lm-billing "
             f"bills run --start {invoice.period_start} --end {invoice.period_end} "
             f"--customer {invoice.customer_id}`.")


@bills_group.command("export")
@click.option("--csv", "as_csv", is_flag=True, required=True, help="CSV on stdout.")
@click.option("--start", type=DATE, required=True,
              help="Invoices whose period starts on or after this day.")
@click.option("--customer-type", default="", help="Only customers of this Customer Type.")
@click.option("--field", "fields", multiple=True, type=click.Choice(EXPORT_FIELDS),
              help="A column (repeatable, in this order). Default: all.")
def bills_export(as_csv: bool, start: Any, customer_type: str, fields: tuple[str, ...]) -> None:
    """Export invoice data (one row per invoice line), streamed."""
    try:
        for chunk in export_csv(start.date(), customer_type=customer_type,
                                fields=fields or EXPORT_FIELDS):
            click.echo(chunk, nl=False)
    except InvoiceError as exc:
        fail(str(exc))
    sys.exit(EXIT_OK)


__all__ = ["bills_group"]
