"""Run Bills: bill customers for a period (billing-cycle.md §1-§4) — load what they pay for, read
every involved server's usage in parallel, compute each invoice (compute.py) and store it whole.

Call inside an app context. Order of the work, and why:

1. Customers whose invoice needs no usage to be refused (Free, inactive, ended, no billing
   group, no plan), or that are already billed for the period, are settled first: no server
   is read for them.
2. The gate: a server of a customer's objects that was never validated or has open drift
   problems skips that customer ("Validate and sync server X first").
3. One ``usage FROM TO`` per remaining server, all in parallel (billing/usage.py), with no
   transaction open.
4. Per customer, ONE short transaction: number, invoice, lines, usage rows, one-time charges
   marked billed, the run's item — all or nothing. The Invoice.active_key unique constraint
   makes a second run of the period (or a concurrent one in another process) report
   "already billed" and create nothing.

A dry run does 1-3 and computes every invoice, but stores none (only the run's own record).

One module on purpose: the order of a bill run's steps (above) is its guarantee of whole
invoices and gapless numbers, so the steps stay together.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import audit, signals
from ..catalog.assignment import GateError, check_gate
from ..engine.store import is_conflict
from ..i18n import M_
from ..models import (
    AdditionalCharge,
    Assignment,
    BillingGroup,
    BillRun,
    BillRunItem,
    ChargeAssignment,
    Customer,
    GroupPlan,
    HostingPlan,
    Invoice,
    MailingList,
    Server,
    Site,
    utcnow,
)
from ..state import get_state
from . import compute as c
from .invoices import (
    AlreadyBilled,
    ChargeTaken,
    CustomerSnapshot,
    InvoiceError,
    active_invoice,
    billed_charge_ids,
    carried_credit,
    find_invoice,
    line_document,
    store_invoice,
)
from .usage import ServerUsage, fetch_period_usage

__all__ = [
    "ATTENTION_CODES",
    "BillRunError",
    "BillRunResult",
    "CustomerOutcome",
    "bill_customers",
    "create_bill_run",
    "last_bills",
    "last_month",
    "rerun_invoice",
    "run_bill_run",
    "run_outcomes",
]

log = logging.getLogger("lm_billing_plugin.billing.runs")

# Skips that need someone to act before the customer can be billed (exit status 1); the
# others (Free, inactive, ended, not started, nothing to bill, already billed) are expected.
ATTENTION_CODES: Final = frozenset({"gate", "usage", "no_group", "no_plan", "store"})
# compute's refusals that do not depend on usage: settled before any server is read.
_EARLY_CODES: Final = frozenset({"free", "inactive", "ended", "not_started", "no_group",
                                 "no_plan"})
ALREADY_BILLED: Final = "already_billed"
DRY_RUN: Final = "dry_run"
# Tries to store one customer's invoice when another writer clashes with it (no invoice of
# its own appeared: a deadlock, not "already billed").
_ATTEMPTS: Final = 10  # backing off 0.05 s more each time: about 2.7 s in all


class BillRunError(ValueError):
    """A bill run that cannot start as asked (bad dates, unknown customer); says what to do."""


def last_month(today: date | None = None) -> c.Period:
    """The default period of Run Billing: the last whole calendar month, where billing days
    start (LM_BILLING_BILLING_TIMEZONE); UTC outside an app."""
    if today is None:
        from flask import has_app_context

        today = get_state().settings.billing_today() if has_app_context() else utcnow().date()
    end = today.replace(day=1) - timedelta(days=1)
    return c.Period(end.replace(day=1), end)


# --- results -------------------------------------------------------------------------------


@dataclass
class CustomerOutcome:
    """What the run did for one customer.

    status: ``invoiced`` (stored now), ``already_billed`` (a non-void invoice exists),
    ``skipped`` (code + reason say why and what to do), ``dry_run`` (computed, not stored).
    """

    customer_id: int
    company: str
    status: str
    invoice_id: int | None = None
    number: str | None = None
    code: str | None = None
    reason: str | None = None
    draft: c.InvoiceDraft | None = None

    def skip_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"customer": self.company, "code": self.code,
                               "reason": self.reason}
        if self.number:
            doc["invoice"] = self.number
        return doc


@dataclass
class BillRunResult:
    run_id: int
    period: c.Period
    dry_run: bool
    currency: str
    outcomes: list[CustomerOutcome] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 = every customer billed or settled as expected; 1 = some skipped for a reason
        that needs action (ATTENTION_CODES)."""
        return 1 if any(o.status == "skipped" and o.code in ATTENTION_CODES
                        for o in self.outcomes) else 0

    def to_json(self) -> dict[str, Any]:
        invoices = []
        for o in self.outcomes:
            if o.status not in ("invoiced", DRY_RUN) or o.draft is None:
                continue
            invoices.append({
                "number": o.number, "customer": o.company,
                "start": self.period.start.isoformat(), "end": self.period.end.isoformat(),
                "currency": self.currency, "total": f"{o.draft.total:.2f}",
                "lines": [line_document(li.group, li.kind, li.description, li.quantity,
                                        li.unit_price, li.amount) for li in o.draft.lines],
            })
        skipped = [o.skip_document() for o in self.outcomes
                   if o.status in ("skipped", ALREADY_BILLED)]
        return {"run": self.run_id, "dry_run": self.dry_run, "invoices": invoices,
                "skipped": skipped}


# --- creating a run ------------------------------------------------------------------------


def _sweep_stale_runs(session: Session, lease_seconds: float) -> None:
    # A run whose process died stays "running"; after a lease's time it is marked
    # interrupted (its customers are billed by the next run, nothing was half-written).
    # A plain read first, then an update by primary key in its own transaction: a ranged
    # UPDATE would take gap locks on MariaDB and deadlock with another run's INSERT.
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    stale = list(session.scalars(sa.select(BillRun.id).where(BillRun.status == "running",
                                                             BillRun.created_at < cutoff)))
    if stale:
        session.execute(
            sa.update(BillRun).where(BillRun.id.in_(stale), BillRun.status == "running")
            .values(status="interrupted", finished_at=utcnow())
            .execution_options(synchronize_session=False))
    session.commit()


def create_bill_run(start: date, end: date, customer_ids: Sequence[int] | None, *, actor: str,
                    dry_run: bool = False) -> int:
    """Record a bill run of start..end for ``customer_ids`` (None = every customer) and one
    pending item per customer; commit and return its id (run_bill_run does the work, pages
    in a background thread). Raises BillRunError."""
    if end < start:
        raise BillRunError(M_("the End Date (%(end)s) is before the Start Date (%(start)s); "
                              "choose an End Date on or after it") % {"end": end, "start": start})
    state = get_state()
    session = state.session
    try:
        _sweep_stale_runs(session, state.settings.lease_seconds)
        query = sa.select(Customer.id).order_by(Customer.company, Customer.id)
        if customer_ids is not None:
            wanted = sorted(set(customer_ids))
            if not wanted:
                raise BillRunError(M_("choose at least one customer to bill"))
            query = query.where(Customer.id.in_(wanted))
        ids = list(session.scalars(query))
        if customer_ids is not None and len(ids) != len(set(customer_ids)):
            missing = sorted(set(customer_ids) - set(ids))
            raise BillRunError(M_("there is no customer %(ids)s; they may have been removed")
                               % {"ids": missing})
        run = BillRun(period_start=start, period_end=end, status="running", dry_run=dry_run,
                      customers=len(ids), actor=actor, created_at=utcnow())
        session.add(run)
        session.flush()
        if ids:
            session.execute(sa.insert(BillRunItem),
                            [{"run_id": run.id, "customer_id": cid} for cid in ids])
        audit.record(session, actor=actor, action="bill_run_dry" if dry_run else "bill_run",
                     object_type="bill_run", object_id=run.id,
                     detail={"start": start.isoformat(), "end": end.isoformat(),
                             "customers": len(ids)})
        run_id = run.id
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run_id


def bill_customers(start: date, end: date, customer_ids: Sequence[int] | None = None, *,
                   actor: str, dry_run: bool = False) -> BillRunResult:
    """create_bill_run + run_bill_run, now (the CLI's and the tests' way)."""
    return run_bill_run(create_bill_run(start, end, customer_ids, actor=actor,
                                        dry_run=dry_run))


def rerun_invoice(key: str | int, *, actor: str) -> int:
    """Create a run of a void invoice's customer and period (its "Run again"); returns the
    run id. Raises InvoiceError when the invoice is not void or the period is billed again."""
    session = get_state().session
    invoice = find_invoice(session, key)
    if invoice is None:
        raise InvoiceError(M_("there is no invoice %(key)s") % {"key": key})
    if invoice.status != "void":
        raise InvoiceError(M_("invoice %(number)s is not void: void it (with a reason) "
                              "before running its period again") % {"number": invoice.number})
    other = active_invoice(session, invoice.customer_id, invoice.period_start,
                           invoice.period_end)
    session.commit()
    if other is not None:
        raise InvoiceError(M_("the period is billed again already: invoice %(number)s")
                           % {"number": other[1]})
    return create_bill_run(invoice.period_start, invoice.period_end, [invoice.customer_id],
                           actor=actor)


# --- loading what customers pay for --------------------------------------------------------


@dataclass
class _Billable:
    """One customer's compute inputs (plain values), and the servers its objects are on."""

    customer_id: int
    snapshot: CustomerSnapshot
    customer: c.Customer
    groups: list[c.Group]
    servers: dict[int, str]  # server id -> name, of paid objects overlapping the period
    charge_ids: list[int]


def _inclusive_end(end: date | None) -> date | None:
    # Assignment end dates are exclusive (the first day not covered); compute's are the
    # last day covered.
    return end - timedelta(days=1) if end is not None else None


def _plan(p: HostingPlan) -> c.Plan:
    method = p.billing_method if p.billing_method in c.BILLING_METHODS else "standard"
    return c.Plan(
        name=p.name, billing_method=method, bill_by_list=bool(p.bill_by_list),
        monthly_price=Decimal(p.monthly_price or 0), overage_cpm=Decimal(p.overage_cpm or 0),
        included_messages=int(p.included_messages or 0),
        max_message_size_kb=int(p.max_message_size_kb or 0),
        monthly_price_per_server=Decimal(p.monthly_price_per_server or 0),
        cost_per_gb=Decimal(p.cost_per_gb or 0), included_gb=Decimal(p.included_gb or 0))


def _load(session: Session, customer_ids: Sequence[int], period: c.Period
          ) -> dict[int, _Billable]:
    """Everything compute needs except usage, for all the customers in a handful of queries."""
    ids = sorted(set(customer_ids))
    customers = {cu.id: cu for cu in session.scalars(
        sa.select(Customer).where(Customer.id.in_(ids)))}
    groups = list(session.scalars(
        sa.select(BillingGroup).where(BillingGroup.customer_id.in_(ids))
        .order_by(BillingGroup.name, BillingGroup.id)))
    gids = [g.id for g in groups]
    owner_of = {g.id: g.customer_id for g in groups}
    plans: dict[int, list[c.PlanTerm]] = defaultdict(list)
    objects: dict[int, list[c.ObjectAssignment]] = defaultdict(list)
    charges: dict[int, list[tuple[ChargeAssignment, AdditionalCharge]]] = defaultdict(list)
    servers: dict[int, dict[int, str]] = defaultdict(dict)
    if gids:
        for term, plan in session.execute(
                sa.select(GroupPlan, HostingPlan).join(HostingPlan,
                                                       HostingPlan.id == GroupPlan.plan_id)
                .where(GroupPlan.group_id.in_(gids))
                .order_by(GroupPlan.start_date, GroupPlan.id)):
            plans[term.group_id].append(c.PlanTerm(_plan(plan), term.start_date,
                                                   term.end_date))
        for a, server_name, site_name, list_name in session.execute(
                sa.select(Assignment, Server.name, Site.name, MailingList.name)
                .join(Server, Server.id == Assignment.server_id)
                .outerjoin(Site, Site.id == Assignment.site_id)
                .outerjoin(MailingList, MailingList.id == Assignment.list_id)
                .where(Assignment.group_id.in_(gids), Assignment.start_date <= period.end,
                       sa.or_(Assignment.end_date.is_(None),
                              Assignment.end_date > period.start))
                .order_by(Assignment.id)):
            end = _inclusive_end(a.end_date)
            if end is not None and end < a.start_date:
                continue  # ended on the day it started: it never covered a day
            objects[a.group_id].append(c.ObjectAssignment(
                a.object_type, server_name, a.start_date, end, site=site_name or "",
                list_name=list_name or "", is_free=bool(a.is_free)))
            if not a.is_free:
                servers[owner_of[a.group_id]][a.server_id] = server_name
        for ca, charge in session.execute(
                sa.select(ChargeAssignment, AdditionalCharge)
                .join(AdditionalCharge, AdditionalCharge.id == ChargeAssignment.charge_id)
                .where(ChargeAssignment.group_id.in_(gids))
                .order_by(ChargeAssignment.start_date, ChargeAssignment.id)):
            charges[ca.group_id].append((ca, charge))
    billed = billed_charge_ids(session, [ca.id for rows in charges.values() for ca, _ in rows])
    out: dict[int, _Billable] = {}
    for cid in ids:
        cu = customers.get(cid)
        if cu is None:
            continue
        own = [g for g in groups if g.customer_id == cid]
        built: list[c.Group] = []
        charge_ids: list[int] = []
        for g in own:
            terms = []
            for ca, charge in charges.get(g.id, []):
                charge_ids.append(ca.id)
                terms.append(c.ChargeTerm(
                    key=ca.id, name=charge.name,
                    amount=Decimal(ca.amount if ca.amount is not None
                                   else charge.default_amount),
                    is_recurring=bool(charge.is_recurring),
                    is_proratable=bool(charge.is_proratable), start=ca.start_date,
                    end=ca.end_date, description=ca.description or "",
                    already_billed=ca.id in billed))
            built.append(c.Group(g.name, tuple(plans.get(g.id, ())),
                                 tuple(objects.get(g.id, ())), tuple(terms)))
        out[cid] = _Billable(
            cid,
            CustomerSnapshot(cid, cu.company, cu.contact_name or "", cu.email or "",
                             cu.additional_emails or ""),
            c.Customer(cu.company, cu.payment_method or "", bool(cu.is_active),
                       cu.start_date, cu.end_date),
            built, servers.get(cid, {}), charge_ids)
    return out


def _lists(session: Session, server_ids: Sequence[int], period: c.Period,
           usage: dict[int, ServerUsage]) -> dict[int, list[c.ListUsage]]:
    """Every list billing knows on these servers that existed in the period, with its usage."""
    by_server: dict[int, list[c.ListUsage]] = defaultdict(list)
    if not server_ids:
        return by_server
    # Billing days start at midnight of LM_BILLING_BILLING_TIMEZONE: a list last seen at 00:30
    # on the 1st there existed on the 1st (UTC may still say the 31st of the month before).
    settings = get_state().settings
    first_moment = datetime.combine(period.start, datetime.min.time(),
                                    tzinfo=settings.billing_timezone)
    assigned = (
        sa.select(Assignment.list_id)
        .where(Assignment.list_id.is_not(None),
               Assignment.server_id.in_(sorted(set(server_ids))),
               Assignment.start_date <= period.end,
               sa.or_(Assignment.end_date.is_(None), Assignment.end_date > period.start)))
    rows = session.execute(
        sa.select(MailingList.server_id, Server.name.label("server_name"),
                  MailingList.name.label("list_name"), MailingList.site_name,
                  MailingList.created, MailingList.status, MailingList.last_seen_at)
        .join(Server, Server.id == MailingList.server_id)
        .where(MailingList.server_id.in_(sorted(set(server_ids))),
               sa.or_(MailingList.status == "active",
                      MailingList.last_seen_at >= first_moment,
                      # a list removed before the period that a list assignment still names:
                      # its removal date says it had no day in the period (left out, compute
                      # would count a missing list as there all the period)
                      MailingList.id.in_(assigned)))
    ).all()
    for row in rows:
        figures = (usage[row.server_id].usage.get(row.list_name) if row.server_id in usage
                   else None)
        # A removed list surely existed until it was last seen (the sync that missed it may
        # have come days later).
        removed = (settings.billing_today(row.last_seen_at) if row.status != "active"
                   else None)
        by_server[row.server_id].append(c.ListUsage(
            row.server_name, row.list_name, row.site_name or "",
            messages=figures.messages if figures else 0,
            recipients=figures.recipients if figures else 0,
            bytes=figures.bytes if figures else 0, created=row.created, removed=removed))
    return by_server


# --- running it ----------------------------------------------------------------------------


class _Runner:
    def __init__(self, session: Session, run: BillRun) -> None:
        self.session = session
        self.run_id = run.id
        self.period = c.Period(run.period_start, run.period_end)
        self.dry_run = bool(run.dry_run)
        self.actor = run.actor
        self.currency = get_state().settings.currency
        self.outcomes: list[CustomerOutcome] = []

    def record(self, outcome: CustomerOutcome, *, commit: bool = True) -> CustomerOutcome:
        """Write the outcome on the run's item and counters (in the open transaction)."""
        counter = {"invoiced": BillRun.invoiced, DRY_RUN: BillRun.invoiced,
                   ALREADY_BILLED: BillRun.already_billed,
                   "skipped": BillRun.skipped}[outcome.status]
        code = outcome.code if outcome.status != "invoiced" else None
        self.session.execute(
            sa.update(BillRunItem)
            .where(BillRunItem.run_id == self.run_id,
                   BillRunItem.customer_id == outcome.customer_id)
            .values(invoice_id=outcome.invoice_id, skip_code=code,
                    skip_reason=outcome.reason)
            .execution_options(synchronize_session=False))
        self.session.execute(
            sa.update(BillRun).where(BillRun.id == self.run_id)
            .values({counter.key: counter + 1}).execution_options(synchronize_session=False))
        if commit:
            self.session.commit()
        self.outcomes.append(outcome)
        return outcome

    def skip(self, b: _Billable, code: str, reason: str) -> CustomerOutcome:
        return self.record(CustomerOutcome(b.customer_id, b.snapshot.company, "skipped",
                                           code=code, reason=reason))

    def already(self, b: _Billable, invoice_id: int, number: str) -> CustomerOutcome:
        return self.record(CustomerOutcome(
            b.customer_id, b.snapshot.company, ALREADY_BILLED, invoice_id=invoice_id,
            number=number, code=ALREADY_BILLED,
            reason=M_("Already billed: invoice %(number)s covers this period. To bill it "
                      "again, void that invoice (with a reason), then run the period again.")
            % {"number": number}))

    def compute(self, b: _Billable, lists: Sequence[c.ListUsage]
                ) -> tuple[c.InvoiceDraft | c.Skip, int | None]:
        carried, carried_from = carried_credit(self.session, b.customer_id, self.period.start)
        return c.compute_invoice(self.period, b.customer, b.groups, lists, carried), carried_from

    def bill(self, b: _Billable, lists: Sequence[c.ListUsage]) -> CustomerOutcome:
        for attempt in range(1, _ATTEMPTS + 1):
            result, carried_from = self.compute(b, lists)
            if isinstance(result, c.Skip):
                self.session.commit()
                return self.skip(b, result.code, result.message)
            if self.dry_run:
                self.session.commit()
                return self.record(CustomerOutcome(
                    b.customer_id, b.snapshot.company, DRY_RUN, code=DRY_RUN, draft=result,
                    reason=M_("Dry run: would bill %(amount)s %(currency)s; nothing was stored.")
                    % {"amount": f"{result.total:.2f}", "currency": self.currency}))
            try:
                invoice = store_invoice(self.session, customer=b.snapshot, period=self.period,
                                        draft=result, run_id=self.run_id, actor=self.actor,
                                        carried_from_id=carried_from)
                outcome = CustomerOutcome(b.customer_id, b.snapshot.company, "invoiced",
                                          invoice_id=invoice.id, number=invoice.number,
                                          draft=result)
                self.record(outcome, commit=False)
                self.session.commit()
                return outcome
            except AlreadyBilled as exc:
                self.session.rollback()
                return self.already(b, exc.invoice_id, exc.number)
            except ChargeTaken:
                # Another run billed one of its one-time charges a moment ago: compute again
                # with the charges as they are now.
                self.session.rollback()
                b = _load(self.session, [b.customer_id], self.period)[b.customer_id]
                continue
            except sa.exc.DBAPIError as exc:
                self.session.rollback()
                if not is_conflict(exc):
                    log.exception("customer %s: storing the invoice failed", b.customer_id)
                    return self.skip(b, "store", _store_message(exc))
                existing = active_invoice(self.session, b.customer_id, self.period.start,
                                          self.period.end)
                if existing is not None:
                    # Another process stored this customer's invoice first.
                    return self.already(b, *existing)
                # A deadlock victim (MariaDB: two first numbers of a year, gap locks) whose
                # rival has not committed yet: wait a moment, then try again.
                log.info("customer %s: storing clashed with another run (attempt %d)",
                         b.customer_id, attempt)
                time.sleep(0.05 * attempt)
        return self.skip(b, "store", M_(
            "Another run was storing invoices at the same moment, %(times)s times; nothing "
            "was stored for this customer. Run the period again for it when the other run has "
            "finished.") % {"times": _ATTEMPTS})


def _store_message(exc: BaseException) -> str:
    return M_("Billing could not store the invoice (%(error)s); nothing was stored for this "
              "customer. Run the period again for it; see the billing server's log if it "
              "repeats.") % {"error": type(exc).__name__}


def _gate_message(name: str, error: BaseException) -> str:
    return str(error) if isinstance(error, GateError) else (
        M_("Validate and sync server %(server)s first: %(error)s")
        % {"server": repr(name), "error": error})


def run_bill_run(run_id: int) -> BillRunResult:
    """Bill the run's pending customers (see the module docstring for the order of work);
    the run becomes ``done`` (or ``failed`` when it stops on an unexpected error, which is
    raised). Each customer's outcome is stored on its BillRunItem as soon as it is known."""
    state = get_state()
    session = state.session
    session.commit()
    run = session.get(BillRun, run_id)
    if run is None:
        raise BillRunError(M_("there is no bill run %(run)s") % {"run": run_id})
    if run.finished_at is not None:
        raise BillRunError(M_("bill run %(run)s has finished already; start a new run")
                           % {"run": run_id})
    runner = _Runner(session, run)
    pending = list(session.scalars(
        sa.select(BillRunItem.customer_id)
        .where(BillRunItem.run_id == run_id, BillRunItem.invoice_id.is_(None),
               BillRunItem.skip_code.is_(None))))
    try:
        _work(runner, pending)
    except BaseException:
        session.rollback()
        log.exception("bill run %s stopped", run_id)
        session.execute(sa.update(BillRun).where(BillRun.id == run_id)
                        .values(status="failed", finished_at=utcnow()))
        session.commit()
        raise
    session.execute(sa.update(BillRun).where(BillRun.id == run_id)
                    .values(status="done", finished_at=utcnow()))
    session.commit()
    result = BillRunResult(run_id, runner.period, runner.dry_run, runner.currency)
    result.outcomes = sorted(runner.outcomes, key=lambda o: (o.company.casefold(),
                                                              o.customer_id))
    issued = [o.invoice_id for o in result.outcomes
              if o.status == "invoiced" and o.invoice_id is not None]
    if issued:
        signals.send(signals.bills_issued, run_id=run_id, invoice_ids=issued,
                     start=runner.period.start, end=runner.period.end, actor=runner.actor)
    return result


def _work(runner: _Runner, customer_ids: Sequence[int]) -> None:
    session, period = runner.session, runner.period
    billables = _load(session, customer_ids, period)
    waiting: list[_Billable] = []
    gate: dict[int, str | None] = {}
    for cid in sorted(billables, key=lambda i: (billables[i].snapshot.company.casefold(), i)):
        b = billables[cid]
        early = c.compute_invoice(period, b.customer, b.groups, ())
        if isinstance(early, c.Skip) and early.code in _EARLY_CODES:
            runner.skip(b, early.code, early.message)
            continue
        existing = active_invoice(session, cid, period.start, period.end)
        if existing is not None:
            runner.already(b, *existing)
            continue
        blocked = None
        for sid, name in sorted(b.servers.items(), key=lambda kv: kv[1]):
            if sid not in gate:
                try:
                    check_gate(session, sid)
                    gate[sid] = None
                except (GateError, ValueError) as exc:
                    gate[sid] = _gate_message(name, exc)
            blocked = blocked or gate[sid]
        if blocked:
            runner.skip(b, "gate", blocked)
            continue
        waiting.append(b)
    session.commit()
    server_ids = sorted({sid for b in waiting for sid in b.servers})
    usage = fetch_period_usage(server_ids, period.start, period.end) if server_ids else {}
    lists = _lists(session, server_ids, period, usage)
    for b in waiting:
        failed = [usage[sid] for sid in sorted(b.servers, key=lambda s: b.servers[s])
                  if sid in usage and not usage[sid].ok]
        if failed:
            err = failed[0].error
            assert err is not None
            runner.skip(b, "usage", M_(
                "Server %(server)s could not be read for the period's usage (%(code)s): "
                "%(message)s Then run the bills again for this customer.")
                % {"server": repr(failed[0].name), "code": err.code, "message": err.message})
            continue
        runner.bill(b, [lst for sid in b.servers for lst in lists.get(sid, [])])


def run_outcomes(run_id: int) -> BillRunResult:
    """A run's outcomes as stored (drafts only for invoices it stored: a dry run's drafts
    live in the result run_bill_run returned)."""
    session = get_state().session
    run = session.get(BillRun, run_id)
    if run is None:
        raise BillRunError(M_("there is no bill run %(run)s") % {"run": run_id})
    period = c.Period(run.period_start, run.period_end)
    result = BillRunResult(run.id, period, bool(run.dry_run), get_state().settings.currency)
    rows = session.execute(
        sa.select(BillRunItem, Customer.company, Invoice)
        .join(Customer, Customer.id == BillRunItem.customer_id)
        .outerjoin(Invoice, Invoice.id == BillRunItem.invoice_id)
        .where(BillRunItem.run_id == run_id)
        .order_by(Customer.company, Customer.id)).all()
    from .invoices import invoice_lines

    for item, company, invoice in rows:
        if item.skip_code is None and invoice is None:
            status = "pending"
        elif item.skip_code is None:
            status = "invoiced"
        elif item.skip_code == ALREADY_BILLED:
            status = ALREADY_BILLED
        elif item.skip_code == DRY_RUN:
            status = DRY_RUN
        else:
            status = "skipped"
        draft = None
        if status == "invoiced" and invoice is not None:
            lines = invoice_lines(session, invoice.id)
            draft = c.InvoiceDraft(
                tuple(c.Line(li.group_name, li.kind, li.description, li.quantity,
                             li.unit_price, li.amount, li.plan_name) for li in lines),
                invoice.total, (), (), invoice.carried_over)
        result.outcomes.append(CustomerOutcome(
            item.customer_id, company, status, invoice_id=item.invoice_id,
            number=invoice.number if invoice is not None else None, code=item.skip_code,
            reason=item.skip_reason, draft=draft))
    session.commit()
    return result


def last_bills(session: Session, customer_ids: Sequence[int]) -> dict[int, Invoice]:
    """Each customer's latest non-void invoice (its "Last Bill Period")."""
    if not customer_ids:
        return {}
    latest = (
        sa.select(Invoice.customer_id, sa.func.max(Invoice.period_end).label("end"))
        .where(Invoice.customer_id.in_(sorted(set(customer_ids))), Invoice.status != "void")
        .group_by(Invoice.customer_id).subquery())
    rows = session.scalars(
        sa.select(Invoice).join(latest, sa.and_(Invoice.customer_id == latest.c.customer_id,
                                                Invoice.period_end == latest.c.end))
        .where(Invoice.status != "void"))
    return {inv.customer_id: inv for inv in rows}
