"""One customer's invoice for one period, computed from plain inputs (billing-cycle.md §1, §2):
no Flask, no database, no I/O; the choices where the spec is silent are in docs/billing-rules.md.

Arithmetic is exact: Decimal inputs become Fractions, and only a line's amount (cents, half up),
its quantity (3 decimals) and a usage row's units (3 decimals) are ever rounded, once each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction

from ..i18n import M_

OBJECT_TYPES = ("server", "site", "list")
_SPECIFICITY = {"server": 0, "site": 1, "list": 2}
BILLING_METHODS = ("standard", "bandwidth")
LINE_KINDS = ("plan", "overage", "server", "bandwidth", "charge", "credit")
CARRIED_TO = "Credit carried over to the next invoice"
CARRIED_FROM = "Credit carried over from invoice {number}"
_GB = 1_000_000_000
# share(days a plan is in force, list) -> the part of the list's usage that plan counts
_Share = Callable[[set[date], "ListUsage"], Fraction]


# --- Inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A bill run's "Start Date" .. "End Date", both inclusive."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"period ends ({self.end}) before it starts ({self.start})")

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def contains(self, day: date) -> bool:
        return self.start <= day <= self.end


@dataclass(frozen=True)
class Customer:
    company: str
    payment_method: str = ""
    is_active: bool = True
    start_date: date | None = None
    end_date: date | None = None


@dataclass(frozen=True)
class Plan:
    """A hosting plan's prices (limits are validation's business, not billing's)."""

    name: str
    billing_method: str = "standard"
    bill_by_list: bool = False
    monthly_price: Decimal = Decimal("0")
    overage_cpm: Decimal = Decimal("0")
    included_messages: int = 0
    max_message_size_kb: int = 0
    monthly_price_per_server: Decimal = Decimal("0")
    cost_per_gb: Decimal = Decimal("0")
    included_gb: Decimal = Decimal("0")

    def __post_init__(self) -> None:
        if self.billing_method not in BILLING_METHODS:
            raise ValueError(f"unknown billing method {self.billing_method!r}")


@dataclass(frozen=True)
class PlanTerm:
    """A hosting plan assigned to a group from start to end (None = open)."""

    plan: Plan
    start: date
    end: date | None = None


@dataclass(frozen=True)
class ObjectAssignment:
    """A whole server, a site or a single list paid for by the group (or free)."""

    object_type: str
    server: str
    start: date
    end: date | None = None
    site: str = ""
    list_name: str = ""
    is_free: bool = False

    def __post_init__(self) -> None:
        if self.object_type not in OBJECT_TYPES:
            raise ValueError(f"unknown object type {self.object_type!r}")

    def covers(self, lst: ListUsage) -> bool:
        if self.server != lst.server:
            return False
        if self.object_type == "site":
            return self.site == lst.site
        if self.object_type == "list":
            return self.list_name == lst.name
        return True


@dataclass(frozen=True)
class ChargeTerm:
    """An additional charge assigned to a group; amount already defaulted by the caller."""

    key: int
    name: str
    amount: Decimal
    is_recurring: bool
    is_proratable: bool
    start: date
    end: date | None = None
    description: str = ""
    already_billed: bool = False


@dataclass(frozen=True)
class Group:
    name: str
    plans: tuple[PlanTerm, ...] = ()
    objects: tuple[ObjectAssignment, ...] = ()
    charges: tuple[ChargeTerm, ...] = ()


@dataclass(frozen=True)
class ListUsage:
    """A list on a hosting server and its sending-log figures for exactly the period.

    created / removed bound the days it existed (None = the whole period).
    """

    server: str
    name: str
    site: str = ""
    messages: int = 0
    recipients: int = 0
    bytes: int = 0
    created: date | None = None
    removed: date | None = None


@dataclass(frozen=True)
class CarriedCredit:
    """A credit the customer's previous invoice carried over (amount > 0)."""

    invoice_number: str
    amount: Decimal


# --- Outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    group: str  # "" for invoice-wide lines (carried credits)
    kind: str
    description: str
    quantity: Decimal  # up to 3 decimals, for the reader; amounts use the exact figure
    unit_price: Decimal
    amount: Decimal  # cents, ROUND_HALF_UP
    # The hosting plan the line is billed under (its name): a plan's own lines name theirs; a
    # group's charges the plan in force at the end of its part of the period; "" for
    # invoice-wide lines. Stored on the invoice line, so revenue per plan keeps the plan of
    # billing time when the group's plan changes later.
    plan: str = ""


@dataclass(frozen=True)
class UsageRow:
    group: str
    server: str
    site: str
    list_name: str
    messages: int
    recipients: int
    bytes: int
    units: Decimal  # message units counted against the group's plan(s), 3 decimals


@dataclass(frozen=True)
class InvoiceDraft:
    lines: tuple[Line, ...]
    total: Decimal
    usage: tuple[UsageRow, ...]
    consumed_charges: tuple[int, ...]  # keys of one-time charges this invoice bills
    carried_over: Decimal  # credit carried to the next invoice (0.00 when none)


@dataclass(frozen=True)
class Skip:
    code: str  # free | inactive | ended | not_started | no_group | no_plan
    message: str


# --- Arithmetic -------------------------------------------------------------------------------


def round_half_up(value: Fraction, places: int) -> Decimal:
    """The exact value rounded half away from zero (Decimal's ROUND_HALF_UP) to places."""
    scaled = abs(value) * 10**places
    whole = int(scaled + Fraction(1, 2))
    sign = -1 if value < 0 else 1
    return Decimal(sign * whole).scaleb(-places)


def _exact(value: Decimal | int) -> Fraction:
    return Fraction(value)


def _days(start: date, end: date) -> Iterable[date]:
    for offset in range((end - start).days + 1):
        yield start + timedelta(days=offset)


def _clip(start: date, end: date | None, lo: date, hi: date) -> tuple[date, date] | None:
    first, last = max(start, lo), min(end or hi, hi)
    return (first, last) if first <= last else None


def _span_days(start: date, end: date | None, lo: date, hi: date) -> set[date]:
    clipped = _clip(start, end, lo, hi)
    return set(_days(*clipped)) if clipped else set()


# --- The computation --------------------------------------------------------------------------


@dataclass
class _Builder:
    days: int
    lines: list[Line] = field(default_factory=list)

    def add(
        self, group: str, kind: str, description: str,
        quantity: Fraction, unit_price: Decimal, amount: Fraction, plan: str = "",
    ) -> None:
        self.lines.append(
            Line(group, kind, description, round_half_up(quantity, 3), unit_price,
                 round_half_up(amount, 2), plan)
        )

    def fraction(self, covered: int) -> Fraction:
        return Fraction(covered, self.days)


def _skip_reason(period: Period, customer: Customer, groups: Sequence[Group]) -> Skip | None:
    if customer.payment_method.strip().casefold() == "free":
        return Skip("free", M_("Free: Payment Method is Free, so no invoice is made."))
    end = customer.end_date
    if end is not None and end < period.start:
        return Skip("ended", M_("Ended on %(end)s, before this period: nothing to bill.")
                    % {"end": end.isoformat()})
    if not customer.is_active and end is None:
        return Skip("inactive", M_("Inactive with no End Date: set its End Date to send a "
                                "final bill, or make it active."))
    if not customer.is_active and end is not None and end > period.end:
        return Skip("inactive", M_("Inactive, End Date %(end)s is after this period: its final "
                                "bill comes with the period that contains it.")
                    % {"end": end.isoformat()})
    if customer.start_date is not None and customer.start_date > period.end:
        return Skip("not_started", M_("Starts on %(start)s, after this period.")
                    % {"start": customer.start_date.isoformat()})
    if not groups:
        return Skip("no_group", M_("No billing group: add a billing group with a hosting plan."))
    return None


def _units(lst: ListUsage, plan: Plan) -> Fraction:
    if plan.max_message_size_kb <= 0:
        return Fraction(lst.recipients)
    return max(Fraction(lst.recipients), Fraction(lst.bytes, plan.max_message_size_kb * 1024))


def _paid_days(group: Group, lists: Sequence[ListUsage], lo: date, hi: date
               ) -> dict[ListUsage, set[date]]:
    """Days each list is a paid object of the group: the most specific assignment active on a
    day decides (a free list inside a paid server is free, a paid list in a free server paid)."""
    paid: dict[ListUsage, set[date]] = {}
    for lst in lists:
        covering = [a for a in group.objects if a.covers(lst)]
        if not covering:
            continue
        first = max(lo, lst.created) if lst.created else lo
        last = min(hi, lst.removed) if lst.removed else hi
        days: set[date] = set()
        for day in _days(first, last) if first <= last else ():
            active = [a for a in covering if a.start <= day and (a.end is None or day <= a.end)]
            if not active:
                continue
            top = max(_SPECIFICITY[a.object_type] for a in active)
            # Two equally specific assignments on one day (a data error): free wins, so a
            # mistake never bills the customer twice.
            if not any(a.is_free for a in active if _SPECIFICITY[a.object_type] == top):
                days.add(day)
        if days:
            paid[lst] = days
    return paid


def _group_lines(b: _Builder, group: Group, lists: Sequence[ListUsage], lo: date, hi: date
                 ) -> list[UsageRow]:
    terms = [(t, _span_days(t.start, t.end, lo, hi)) for t in group.plans]
    terms = [(t, d) for t, d in terms if d]
    paid = _paid_days(group, lists, lo, hi)

    def share(days_in_plan: set[date], lst: ListUsage) -> Fraction:
        # A list's usage covers the whole period; when the group's plan changes inside it,
        # each plan counts the share of the list's paid days it was in force.
        total = sum(len(d & paid[lst]) for _, d in terms)
        return Fraction(len(days_in_plan & paid[lst]), total) if total else Fraction(0)

    units_of: dict[ListUsage, Fraction] = dict.fromkeys(paid, Fraction(0))
    for term, plan_days in terms:
        plan, name = term.plan, term.plan.name
        f = b.fraction(len(plan_days))
        if plan.billing_method == "bandwidth":
            _bandwidth_lines(b, group, term, plan_days, paid, share, lo, hi)
            for lst in paid:
                units_of[lst] += Fraction(lst.recipients) * share(plan_days, lst)
            continue
        weighted = {lst: _units(lst, plan) * share(plan_days, lst) for lst in paid}
        for lst, units in weighted.items():
            units_of[lst] += units
        cpm, price = _exact(plan.overage_cpm), _exact(plan.monthly_price)
        if not plan.bill_by_list:
            b.add(group.name, "plan", f"Hosting plan {name}", f, plan.monthly_price, price * f,
                  name)
            excess = max(Fraction(0), sum(weighted.values(), Fraction(0))
                         - plan.included_messages * f)
            _overage(b, group.name, f"Overage, {name}", excess, plan.overage_cpm, cpm, name)
            continue
        for lst in sorted(paid, key=lambda x: (x.server, x.site, x.name)):
            f_list = b.fraction(len(plan_days & paid[lst]))
            if not f_list:
                continue
            where = f"list {lst.name} on {lst.server}"
            b.add(group.name, "plan", f"Hosting plan {name}, {where}", f_list,
                  plan.monthly_price, price * f_list, name)
            excess = max(Fraction(0), weighted[lst] - plan.included_messages * f_list)
            _overage(b, group.name, f"Overage, {name}, {where}", excess, plan.overage_cpm, cpm,
                     name)
    return [
        UsageRow(group.name, lst.server, lst.site, lst.name, lst.messages, lst.recipients,
                 lst.bytes, round_half_up(units_of[lst], 3))
        for lst in sorted(paid, key=lambda x: (x.server, x.site, x.name))
    ]


def _overage(b: _Builder, group: str, description: str, excess: Fraction,
             cpm_decimal: Decimal, cpm: Fraction, plan: str) -> None:
    thousands = excess / 1000
    amount = thousands * cpm
    if round_half_up(amount, 2):  # "No line when zero": nothing worth a cent
        b.add(group, "overage", description, thousands, cpm_decimal, amount, plan)


def _bandwidth_lines(
    b: _Builder, group: Group, term: PlanTerm, plan_days: set[date],
    paid: dict[ListUsage, set[date]], share: _Share, lo: date, hi: date,
) -> None:
    plan = term.plan
    servers = sorted({a.server for a in group.objects if not a.is_free})
    for server in servers:
        on_server: set[date] = set()
        for a in group.objects:
            if a.server == server and not a.is_free:
                on_server |= _span_days(a.start, a.end, lo, hi)
        f = b.fraction(len(on_server & plan_days))
        if not f:
            continue
        b.add(group.name, "server", f"{plan.name}, server {server}", f,
              plan.monthly_price_per_server, _exact(plan.monthly_price_per_server) * f,
              plan.name)
        gb = sum((Fraction(lst.bytes, _GB) * share(plan_days, lst)
                  for lst in paid if lst.server == server), Fraction(0))
        excess = max(Fraction(0), gb - _exact(plan.included_gb) * f)
        # "a line ... and an overage line" per server: unlike the Standard overage, the spec
        # says no "No line when zero" here, so the line is kept even at 0.00.
        b.add(group.name, "bandwidth", f"Bandwidth overage, {plan.name}, server {server}",
              excess, plan.cost_per_gb, excess * _exact(plan.cost_per_gb), plan.name)


def _period_plan(group: Group, lo: date, hi: date) -> str:
    """The plan a group's charges are counted under: the one in force last in lo..hi (the
    latest to start of the terms overlapping it), "" when none is."""
    terms = [t for t in group.plans if _clip(t.start, t.end, lo, hi)]
    return max(terms, key=lambda t: t.start).plan.name if terms else ""


def _charge_lines(b: _Builder, period: Period, group: Group, lo: date, hi: date) -> list[int]:
    consumed: list[int] = []
    plan = _period_plan(group, lo, hi)
    for charge in group.charges:
        text = f"{charge.name}: {charge.description}" if charge.description else charge.name
        amount = _exact(charge.amount)
        if not charge.is_recurring:
            if charge.already_billed or not period.contains(charge.start):
                continue
            b.add(group.name, "charge", text, Fraction(1), charge.amount, amount, plan)
            consumed.append(charge.key)
            continue
        clipped = _clip(charge.start, charge.end, lo, hi)
        if clipped is None:
            continue
        if charge.is_proratable:
            f = b.fraction((clipped[1] - clipped[0]).days + 1)
            b.add(group.name, "charge", text, f, charge.amount, amount * f, plan)
        else:
            b.add(group.name, "charge", text, Fraction(1), charge.amount, amount, plan)
    return consumed


def compute_invoice(
    period: Period,
    customer: Customer,
    groups: Sequence[Group],
    lists: Sequence[ListUsage],
    carried_in: CarriedCredit | None = None,
) -> InvoiceDraft | Skip:
    """The invoice draft of one customer for one period, or why it is skipped.

    lists holds every list the customer's assignments may cover, with its usage for exactly
    the period; a list named by a list assignment but missing there counts with no usage.
    """
    skip = _skip_reason(period, customer, groups)
    if skip is not None:
        return skip
    # The customer's own Start / End Date bound every fraction (its first and final bills);
    # the denominator stays the period's days.
    lo = max(period.start, customer.start_date or period.start)
    hi = min(period.end, customer.end_date or period.end)
    known = {(lst.server, lst.name): lst for lst in lists}
    for group in groups:
        for a in group.objects:
            if a.object_type == "list" and (a.server, a.list_name) not in known:
                known[(a.server, a.list_name)] = ListUsage(a.server, a.list_name)
    universe = list(known.values())

    for group in groups:
        has_plan = any(_clip(t.start, t.end, lo, hi) for t in group.plans)
        has_paid = any(not a.is_free and _clip(a.start, a.end, lo, hi) for a in group.objects)
        if has_paid and not has_plan:
            return Skip("no_plan", M_("Group %(group)s has no hosting plan for this period: "
                                   "assign one, then run the period again.")
                        % {"group": group.name})
    # §4: "the customer has ... no hosting plan for the period" is skipped, charges or not.
    if not any(_clip(t.start, t.end, lo, hi) for g in groups for t in g.plans):
        return Skip("no_plan", M_("No hosting plan for this period: assign a hosting plan "
                               "to a billing group, then run the period again."))

    b = _Builder(period.days)
    usage: list[UsageRow] = []
    consumed: list[int] = []
    for group in groups:
        usage += _group_lines(b, group, universe, lo, hi)
        consumed += _charge_lines(b, period, group, lo, hi)
    # A billable customer with a plan but no line (Bill by List with no paid list) still gets
    # its invoice, 0.00: §4's reasons are the only ones to skip ("bills every other customer").
    if carried_in is not None and carried_in.amount:
        b.lines.append(Line("", "credit", CARRIED_FROM.format(number=carried_in.invoice_number),
                            Decimal("1.000"), -carried_in.amount,
                            -round_half_up(_exact(carried_in.amount), 2)))
    total = sum((line.amount for line in b.lines), Decimal("0.00"))
    carried_over = Decimal("0.00")
    if total < 0:
        carried_over = -total
        b.lines.append(Line("", "credit", CARRIED_TO, Decimal("1.000"), carried_over,
                            carried_over))
        total = Decimal("0.00")
    return InvoiceDraft(tuple(b.lines), total, tuple(usage), tuple(consumed), carried_over)


__all__ = [
    "CARRIED_FROM",
    "CARRIED_TO",
    "CarriedCredit",
    "ChargeTerm",
    "Customer",
    "Group",
    "InvoiceDraft",
    "Line",
    "ListUsage",
    "ObjectAssignment",
    "Period",
    "Plan",
    "PlanTerm",
    "Skip",
    "UsageRow",
    "compute_invoice",
    "round_half_up",
]
