"""An independent reading of billing-cycle.md §1-§2, for comparison with compute_invoice.

Written from the spec text (and, where the spec is silent, from the choices documented in
docs/billing-rules.md, each marked "choice N" below), not from compute.py's code. It works
day by day: for every day of the billed window it asks which plan terms, assignments and
lists are in force, and counts.

Arithmetic: the spec says "all arithmetic in exact decimals" and rounds only a line's amount
(cents, half up) and its quantity (3 decimals). Fractions such as 15/31 are not finite
decimals, so figures are kept as exact rationals (Fraction built from the Decimal inputs) and
rounded once, at the end, with integer arithmetic (half away from zero, Decimal's
ROUND_HALF_UP).

Only compute.py's *input* dataclasses are used (they are the interface); the oracle returns
its own plain result.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction

from lm_billing_plugin.billing.compute import (
    CarriedCredit,
    Customer,
    Group,
    ListUsage,
    ObjectAssignment,
    Period,
    PlanTerm,
)

TO_NEXT = "Credit carried over to the next invoice"
FROM_PREVIOUS = "Credit carried over from invoice {}"
LEVEL = {"server": 1, "site": 2, "list": 3}  # server > site > list: list is most specific


@dataclass(frozen=True)
class OLine:
    group: str
    kind: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    description: str = ""  # only the carried-credit labels are the spec's


@dataclass(frozen=True)
class OInvoice:
    lines: tuple[OLine, ...]
    total: Decimal
    carried_over: Decimal
    consumed: tuple[int, ...]
    units: tuple[tuple[str, str, str, Decimal], ...]  # (group, server, list, units), sorted


def half_up(value: Fraction, places: int) -> Decimal:
    """value rounded to places decimals, half away from zero, exactly."""
    scaled = value * 10**places
    sign = -1 if scaled < 0 else 1
    whole, rest = divmod(abs(scaled.numerator), scaled.denominator)
    if 2 * rest >= scaled.denominator:
        whole += 1
    return Decimal(sign * whole).scaleb(-places)


def cents(value: Fraction) -> Decimal:
    return half_up(value, 2)


def q3(value: Fraction) -> Decimal:
    return half_up(value, 3)


def every_day(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def in_force(start: date, end: date | None, day: date) -> bool:
    """An open end date runs on (to the period's end)."""
    return start <= day and (end is None or day <= end)


def covers(a: ObjectAssignment, lst: ListUsage) -> bool:
    if a.server != lst.server:
        return False
    if a.object_type == "server":
        return True
    if a.object_type == "site":
        return a.site == lst.site
    return a.list_name == lst.name


def exists_on(lst: ListUsage, day: date) -> bool:
    # choice 3: a list's created / removed dates bound its days
    return (lst.created is None or lst.created <= day) and (
        lst.removed is None or day <= lst.removed)


def paid_on(group: Group, lst: ListUsage, day: date) -> bool:
    """Choice 3: the most specific assignment in force that day decides; free wins a tie."""
    if not exists_on(lst, day):
        return False
    live = [a for a in group.objects if covers(a, lst) and in_force(a.start, a.end, day)]
    if not live:
        return False
    top = max(LEVEL[a.object_type] for a in live)
    return all(not a.is_free for a in live if LEVEL[a.object_type] == top)


def message_units(lst: ListUsage, kb: int) -> Fraction:
    """units = max(recipients, bytes / (KB x 1024)); Max Message Size 0: units = recipients."""
    if kb == 0:
        return Fraction(lst.recipients)
    return max(Fraction(lst.recipients), Fraction(lst.bytes) / (kb * 1024))


def oracle_invoice(
    period: Period, customer: Customer, groups: tuple[Group, ...] | list[Group],
    lists: tuple[ListUsage, ...] | list[ListUsage], carried_in: CarriedCredit | None,
) -> OInvoice | str:
    """The invoice, or the skip code."""
    # §1 / choice 2: who is billed
    if customer.payment_method.strip().lower() == "free":
        return "free"
    if customer.end_date is not None and customer.end_date < period.start:
        return "ended"
    if not customer.is_active and (customer.end_date is None
                                   or customer.end_date > period.end):
        return "inactive"
    if customer.start_date is not None and customer.start_date > period.end:
        return "not_started"
    if not groups:
        return "no_group"

    period_days = (period.end - period.start).days + 1
    # choice 1: the customer's own Start / End Date bound the billed window; the
    # denominator stays the period's days (so a final bill is prorated)
    window = [d for d in every_day(period.start, period.end)
              if (customer.start_date is None or customer.start_date <= d)
              and (customer.end_date is None or d <= customer.end_date)]

    def frac(n_days: int) -> Fraction:
        return Fraction(n_days, period_days)

    # the lists the assignments may cover; a list assignment without a usage row has no usage
    universe = list(lists)
    for group in groups:
        for a in group.objects:
            if a.object_type == "list" and not any(
                    x.server == a.server and x.name == a.list_name for x in universe):
                universe.append(ListUsage(a.server, a.list_name))

    # §4 / choice 10: no hosting plan for the period
    any_plan = False
    for group in groups:
        has_plan = any(in_force(t.start, t.end, d) for t in group.plans for d in window)
        has_paid_object = any(not a.is_free and in_force(a.start, a.end, d)
                              for a in group.objects for d in window)
        if has_paid_object and not has_plan:
            return "no_plan"
        any_plan = any_plan or has_plan
    if not any_plan:  # §4: "no hosting plan for the period" is a reason to skip
        return "no_plan"

    lines: list[OLine] = []
    units_rows: list[tuple[str, str, str, Decimal]] = []
    consumed: list[int] = []
    for group in groups:
        gname = group.name
        paid_days: dict[int, set[date]] = {}
        for i, lst in enumerate(universe):
            days = {d for d in window if paid_on(group, lst, d)}
            if days:
                paid_days[i] = days
        term_days: list[tuple[PlanTerm, set[date]]] = []
        for t in group.plans:
            days = {d for d in window if in_force(t.start, t.end, d)}
            if days:
                term_days.append((t, days))

        def share(t_days: set[date], i: int, terms: list[tuple[PlanTerm, set[date]]] = term_days,
                  paid: dict[int, set[date]] = paid_days) -> Fraction:
            # choice 4: the whole period's usage counts; each plan term counts the part of a
            # list's usage in proportion to that list's paid days under it
            under_all = sum(len(d & paid[i]) for _, d in terms)
            if under_all == 0:
                return Fraction(0)
            return Fraction(len(t_days & paid[i]), under_all)

        counted: dict[int, Fraction] = {i: Fraction(0) for i in paid_days}
        for t, t_days in term_days:
            p = t.plan
            f = frac(len(t_days))
            if p.billing_method == "standard":
                per_list = {i: message_units(universe[i], p.max_message_size_kb) * share(t_days, i)
                            for i in paid_days}
                for i, u in per_list.items():
                    counted[i] += u
                if not p.bill_by_list:
                    # one line Monthly Price x f, allowance Included Messages x f over the
                    # group's paid lists together (choice 5: even with no paid list)
                    lines.append(OLine(gname, "plan", q3(f), p.monthly_price,
                                       cents(Fraction(p.monthly_price) * f)))
                    excess = max(Fraction(0), sum(per_list.values(), Fraction(0))
                                 - p.included_messages * f)
                    thousands = excess / 1000
                    amount = cents(thousands * Fraction(p.overage_cpm))
                    if amount != 0:  # "No line when zero" (choice 7: the rounded amount)
                        lines.append(OLine(gname, "overage", q3(thousands), p.overage_cpm,
                                           amount))
                else:
                    order = sorted(paid_days, key=lambda i: (
                        universe[i].server, universe[i].site, universe[i].name))
                    for i in order:
                        both = t_days & paid_days[i]
                        if not both:
                            continue
                        f_list = frac(len(both))
                        lines.append(OLine(gname, "plan", q3(f_list), p.monthly_price,
                                           cents(Fraction(p.monthly_price) * f_list)))
                        excess = max(Fraction(0), per_list[i] - p.included_messages * f_list)
                        thousands = excess / 1000
                        amount = cents(thousands * Fraction(p.overage_cpm))
                        if amount != 0:
                            lines.append(OLine(gname, "overage", q3(thousands), p.overage_cpm,
                                               amount))
            else:
                # Bandwidth, per server (choice 6: ignores Bill by List; a server's f is the
                # days the group has a paid assignment on it, within the plan term)
                for i in paid_days:
                    counted[i] += universe[i].recipients * share(t_days, i)
                for srv in sorted({a.server for a in group.objects if not a.is_free}):
                    s_days = {d for d in t_days if any(
                        a.server == srv and not a.is_free and in_force(a.start, a.end, d)
                        for a in group.objects)}
                    if not s_days:
                        continue
                    f_srv = frac(len(s_days))
                    lines.append(OLine(gname, "server", q3(f_srv), p.monthly_price_per_server,
                                       cents(Fraction(p.monthly_price_per_server) * f_srv)))
                    gb = sum((Fraction(universe[i].bytes, 10**9) * share(t_days, i)
                              for i in paid_days if universe[i].server == srv), Fraction(0))
                    excess = max(Fraction(0), gb - Fraction(p.included_gb) * f_srv)
                    # "a line ... and an overage line": no "No line when zero" here
                    lines.append(OLine(gname, "bandwidth", q3(excess), p.cost_per_gb,
                                       cents(excess * Fraction(p.cost_per_gb))))
        for i in paid_days:
            lst = universe[i]
            units_rows.append((gname, lst.server, lst.name, q3(counted[i])))

        for c in group.charges:
            if not c.is_recurring:
                # billed once, in the first run whose period contains its start date, in full
                if not c.already_billed and period.start <= c.start <= period.end:
                    lines.append(OLine(gname, "charge", Decimal("1.000"), c.amount,
                                       cents(Fraction(c.amount))))
                    consumed.append(c.key)
                continue
            overlap = [d for d in window if in_force(c.start, c.end, d)]
            if not overlap:
                continue
            if c.is_proratable:
                f = frac(len(overlap))
                lines.append(OLine(gname, "charge", q3(f), c.amount,
                                   cents(Fraction(c.amount) * f)))
            else:
                lines.append(OLine(gname, "charge", Decimal("1.000"), c.amount,
                                   cents(Fraction(c.amount))))

    # no line at all is still an invoice (0.00): §4 lists the only reasons to skip
    if carried_in is not None and carried_in.amount != 0:
        lines.append(OLine("", "credit", Decimal("1.000"), -carried_in.amount,
                           -cents(Fraction(carried_in.amount)),
                           FROM_PREVIOUS.format(carried_in.invoice_number)))
    total = sum((line.amount for line in lines), Decimal("0.00"))
    carried_over = Decimal("0.00")
    if total < 0:
        carried_over = -total
        lines.append(OLine("", "credit", Decimal("1.000"), carried_over, carried_over, TO_NEXT))
        total = Decimal("0.00")
    return OInvoice(tuple(lines), total, carried_over, tuple(consumed), tuple(sorted(units_rows)))
