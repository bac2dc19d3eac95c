"""The bill computation rule by rule (billing-cycle.md §1, §2), one table row per rule, and a
Hypothesis property that any invoice adds up to its rounded lines and is never negative."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lm_billing_plugin.billing.compute import (
    CarriedCredit,
    ChargeTerm,
    Customer,
    Group,
    InvoiceDraft,
    ListUsage,
    ObjectAssignment,
    Period,
    Plan,
    PlanTerm,
    Skip,
    compute_invoice,
    round_half_up,
)

D = Decimal
MAR = Period(date(2026, 3, 1), date(2026, 3, 31))
ACME = Customer("Acme")
OPEN = date(2020, 1, 1)


def plan(**kw: object) -> Plan:
    return Plan(name=str(kw.pop("name", "Basic")), **kw)  # type: ignore[arg-type]


def server(name: str = "alpha", start: date = OPEN, end: date | None = None,
           free: bool = False) -> ObjectAssignment:
    return ObjectAssignment("server", name, start, end, is_free=free)


def a_list(name: str, srv: str = "alpha", start: date = OPEN, end: date | None = None,
           free: bool = False) -> ObjectAssignment:
    return ObjectAssignment("list", srv, start, end, list_name=name, is_free=free)


def charge(amount: str, *, recurring: bool, prorate: bool = False, start: date = OPEN,
           end: date | None = None, key: int = 1, billed: bool = False) -> ChargeTerm:
    return ChargeTerm(key, "Support", D(amount), recurring, prorate, start, end,
                      already_billed=billed)


@dataclass(frozen=True)
class Case:
    name: str
    groups: tuple[Group, ...]
    lines: tuple[tuple[str, str], ...]  # (kind, amount)
    total: str
    lists: tuple[ListUsage, ...] = ()
    period: Period = MAR
    customer: Customer = ACME
    carried_in: CarriedCredit | None = None
    carried_over: str = "0.00"
    consumed: tuple[int, ...] = ()
    units: tuple[str, ...] = field(default=())  # usage rows' units, when the case checks them


def g(*plans: PlanTerm, objects: tuple[ObjectAssignment, ...] = (server(),),
      charges: tuple[ChargeTerm, ...] = ()) -> tuple[Group, ...]:
    return (Group("Main", plans, objects, charges),)


def term(p: Plan, start: date = OPEN, end: date | None = None) -> PlanTerm:
    return PlanTerm(p, start, end)


CASES = [
    Case("full 31-day month", g(term(plan(monthly_price=D("31.00")))), (("plan", "31.00"),),
         "31.00"),
    Case("plan starts on the 17th of a 31-day month: 15/31",
         g(term(plan(monthly_price=D("31.00")), date(2026, 3, 17))), (("plan", "15.00"),),
         "15.00"),
    Case("plan ends on the 1st of February 2026: 1/28",
         g(term(plan(monthly_price=D("28.00")), end=date(2026, 2, 1))), (("plan", "1.00"),),
         "1.00", period=Period(date(2026, 2, 1), date(2026, 2, 28))),
    Case("leap February 2028 has 29 days: 15/29",
         g(term(plan(monthly_price=D("29.00")), date(2028, 2, 15))), (("plan", "15.00"),),
         "15.00", period=Period(date(2028, 2, 1), date(2028, 2, 29))),
    Case("last day of a leap February: 10.00 x 1/29 = 0.3448",
         g(term(plan(monthly_price=D("10.00")), date(2028, 2, 29))), (("plan", "0.34"),),
         "0.34", period=Period(date(2028, 2, 1), date(2028, 2, 29))),
    Case("an exact half cent rounds up: 0.45 x 1/30 = 0.015",
         g(term(plan(monthly_price=D("0.45")), date(2026, 4, 30))), (("plan", "0.02"),),
         "0.02", period=Period(date(2026, 4, 1), date(2026, 4, 30))),
    Case("Bill by List No: one allowance over all paid lists (1500 - 1000) / 1000 x 2.00",
         g(term(plan(monthly_price=D("10.00"), included_messages=1000,
                     overage_cpm=D("2.00")))),
         (("plan", "10.00"), ("overage", "1.00")), "11.00",
         lists=(ListUsage("alpha", "l1", recipients=800), ListUsage("alpha", "l2",
                                                                    recipients=700))),
    Case("Bill by List No: within the allowance, no overage line",
         g(term(plan(monthly_price=D("10.00"), included_messages=2000,
                     overage_cpm=D("2.00")))),
         (("plan", "10.00"),), "10.00", lists=(ListUsage("alpha", "l1", recipients=1999),)),
    Case("Bill by List Yes: a line and an allowance per list, prorated by f_list",
         g(term(plan(monthly_price=D("5.00"), included_messages=1000, overage_cpm=D("2.00"),
                     bill_by_list=True)),
           objects=(a_list("a"), a_list("b", start=date(2026, 3, 17)))),
         (("plan", "5.00"), ("overage", "1.00"), ("plan", "2.42"), ("overage", "1.03")),
         "9.45",
         lists=(ListUsage("alpha", "a", recipients=1500), ListUsage("alpha", "b",
                                                                   recipients=1000))),
    Case("message units: 12,288 bytes to 100 recipients with a 10 KB unit = 120 units",
         g(term(plan(max_message_size_kb=10, overage_cpm=D("1000.00")))),
         (("plan", "0.00"), ("overage", "120.00")), "120.00",
         lists=(ListUsage("alpha", "l1", messages=1, recipients=100, bytes=12288 * 100),),
         units=("120.000",)),
    Case("message units: small messages count one per recipient",
         g(term(plan(max_message_size_kb=10, overage_cpm=D("1000.00")))),
         (("plan", "0.00"), ("overage", "100.00")), "100.00",
         lists=(ListUsage("alpha", "l1", messages=1, recipients=100, bytes=5000),),
         units=("100.000",)),
    Case("Max Message Size 0: units = recipients, whatever the bytes",
         g(term(plan(max_message_size_kb=0, overage_cpm=D("1000.00")))),
         (("plan", "0.00"), ("overage", "100.00")), "100.00",
         lists=(ListUsage("alpha", "l1", messages=1, recipients=100, bytes=10**9),),
         units=("100.000",)),
    Case("Bandwidth per server: price x f and max(0, GB - Included GB x f) x Cost Per GB",
         g(term(plan(billing_method="bandwidth", monthly_price_per_server=D("20.00"),
                     included_gb=D("1"), cost_per_gb=D("0.50"))),
           objects=(server("alpha"), a_list("b1", "beta", start=date(2026, 3, 17)))),
         (("server", "20.00"), ("bandwidth", "1.00"), ("server", "9.68"),
          ("bandwidth", "0.26")), "30.94",
         lists=(ListUsage("alpha", "l1", bytes=3 * 10**9),
                ListUsage("beta", "b1", bytes=10**9))),
    Case("Bandwidth overage within Included GB: the server's overage line stays, at 0.00",
         g(term(plan(billing_method="bandwidth", monthly_price_per_server=D("20.00"),
                     included_gb=D("5"), cost_per_gb=D("0.50")))),
         (("server", "20.00"), ("bandwidth", "0.00")), "20.00",
         lists=(ListUsage("alpha", "l1", bytes=10**9),)),
    Case("Bandwidth overage worth less than a cent: the line stays, at 0.00",
         g(term(plan(billing_method="bandwidth", cost_per_gb=D("0.40")))),
         (("server", "0.00"), ("bandwidth", "0.00")), "0.00",
         lists=(ListUsage("alpha", "l1", bytes=10**7),)),
    Case("Is Free list inside a paid server: no per-list price, no usage",
         g(term(plan(monthly_price=D("5.00"), bill_by_list=True, overage_cpm=D("1000"))),
           objects=(server(), a_list("gift", free=True))),
         (("plan", "5.00"),), "5.00",
         lists=(ListUsage("alpha", "paid"), ListUsage("alpha", "gift", recipients=1000))),
    Case("paid list inside an Is Free server: only that list is billed",
         g(term(plan(monthly_price=D("5.00"), bill_by_list=True)),
           objects=(server(free=True), a_list("paid"))),
         (("plan", "5.00"),), "5.00",
         lists=(ListUsage("alpha", "paid"), ListUsage("alpha", "other"))),
    Case("a list's days are the union of the group's assignments covering it (1-20 Mar)",
         g(term(plan(monthly_price=D("31.00"), bill_by_list=True)),
           objects=(server(start=date(2026, 3, 1), end=date(2026, 3, 10)),
                    a_list("l1", start=date(2026, 3, 5), end=date(2026, 3, 20)))),
         (("plan", "20.00"),), "20.00", lists=(ListUsage("alpha", "l1"),)),
    Case("a list created on the 22nd under a server assignment: 10/31",
         g(term(plan(monthly_price=D("31.00"), bill_by_list=True))),
         (("plan", "10.00"),), "10.00",
         lists=(ListUsage("alpha", "l1", created=date(2026, 3, 22)),)),
    Case("plan changes on the 16th: each plan counts its share of the usage",
         g(term(plan(name="A", monthly_price=D("10.00"), overage_cpm=D("1.00")),
                end=date(2026, 3, 15)),
           term(plan(name="B", monthly_price=D("20.00"), overage_cpm=D("2.00")),
                date(2026, 3, 16))),
         (("plan", "4.84"), ("overage", "15.00"), ("plan", "10.32"), ("overage", "32.00")),
         "62.16", lists=(ListUsage("alpha", "l1", recipients=31000),)),
    Case("recurring proratable charge from the 11th: 31.00 x 21/31",
         g(term(plan()), charges=(charge("31.00", recurring=True, prorate=True,
                                         start=date(2026, 3, 11)),)),
         (("plan", "0.00"), ("charge", "21.00")), "21.00"),
    Case("recurring, not proratable, one day in the period: whole amount",
         g(term(plan()), charges=(charge("12.00", recurring=True, start=date(2026, 3, 31)),)),
         (("plan", "0.00"), ("charge", "12.00")), "12.00"),
    Case("recurring charge that ended before the period: no line",
         g(term(plan()), charges=(charge("12.00", recurring=True, end=date(2026, 2, 28)),)),
         (("plan", "0.00"),), "0.00"),
    Case("one-time charge starting in the period: billed in full, recorded",
         g(term(plan()), charges=(charge("99.00", recurring=False, start=date(2026, 3, 31),
                                         key=7),)),
         (("plan", "0.00"), ("charge", "99.00")), "99.00", consumed=(7,)),
    Case("one-time charge already billed: never again",
         g(term(plan()), charges=(charge("99.00", recurring=False, start=date(2026, 3, 2),
                                         billed=True),)),
         (("plan", "0.00"),), "0.00"),
    Case("one-time charge that started before the period: not this run's",
         g(term(plan()), charges=(charge("99.00", recurring=False, start=date(2026, 2, 28)),)),
         (("plan", "0.00"),), "0.00"),
    Case("credit larger than the charges: carried over, total 0.00",
         g(term(plan(monthly_price=D("30.00"))),
           charges=(charge("-100", recurring=False, start=date(2026, 3, 1), key=3),)),
         (("plan", "30.00"), ("charge", "-100.00"), ("credit", "70.00")), "0.00",
         carried_over="70.00", consumed=(3,)),
    Case("carried-in credit larger than the charges: carried on",
         g(term(plan(monthly_price=D("30.00")))),
         (("plan", "30.00"), ("credit", "-50.00"), ("credit", "20.00")), "0.00",
         carried_in=CarriedCredit("2026-00001", D("50.00")), carried_over="20.00"),
    Case("carried-in credit smaller than the charges: used up",
         g(term(plan(monthly_price=D("30.00")))),
         (("plan", "30.00"), ("credit", "-10.00")), "20.00",
         carried_in=CarriedCredit("2026-00001", D("10.00"))),
    Case("final bill: inactive, End Date the 15th prorates plan and charges",
         g(term(plan(monthly_price=D("31.00"))),
           charges=(charge("31.00", recurring=True, prorate=True),)),
         (("plan", "15.00"), ("charge", "15.00")), "30.00",
         customer=Customer("Acme", is_active=False, end_date=date(2026, 3, 15))),
    Case("final bill, Bandwidth: End Date the 10th prorates the server and its Included GB",
         g(term(plan(billing_method="bandwidth", monthly_price_per_server=D("31.00"),
                     included_gb=D("3.1"), cost_per_gb=D("1.00")))),
         (("server", "10.00"), ("bandwidth", "1.00")), "11.00",
         lists=(ListUsage("alpha", "l1", bytes=2 * 10**9),),
         customer=Customer("Acme", end_date=date(2026, 3, 10))),
    Case("final bill, Bill by List: End Date the 10th gives 10/31 and 10/31 of the allowance",
         g(term(plan(monthly_price=D("31.00"), bill_by_list=True, included_messages=3100,
                     overage_cpm=D("1.00")))),
         (("plan", "10.00"), ("overage", "1.00")), "11.00",
         lists=(ListUsage("alpha", "l1", recipients=2000),),
         customer=Customer("Acme", is_active=False, end_date=date(2026, 3, 10))),
    Case("customer Start Date the 22nd prorates its first bill",
         g(term(plan(monthly_price=D("31.00")))), (("plan", "10.00"),), "10.00",
         customer=Customer("Acme", start_date=date(2026, 3, 22))),
    Case("§4: a plan but no line (Bill by List, no paid list) is still invoiced, 0.00",
         g(term(plan(bill_by_list=True, monthly_price=D("5.00"))), objects=()), (), "0.00"),
    Case("§4: an empty invoice carries a carried-in credit on",
         g(term(plan(bill_by_list=True)), objects=(server(free=True),)),
         (("credit", "-25.00"), ("credit", "25.00")), "0.00",
         carried_in=CarriedCredit("2026-00003", D("25.00")), carried_over="25.00",
         lists=(ListUsage("alpha", "l1", recipients=10),)),
    Case("a group with charges only needs no plan when another group has one",
         (Group("Main", (term(plan(monthly_price=D("10.00"))),), (server(),)),
          Group("Setup", charges=(charge("50.00", recurring=False, start=date(2026, 3, 1)),))),
         (("plan", "10.00"), ("charge", "50.00")), "60.00", consumed=(1,)),
    # --- rules the second review (docs/billing-conformance.md) found without their own case ---
    # §1 server > site > list: a site assignment covers its own site's lists only.
    Case("a site assignment covers only that site's lists: one list line, 5.00",
         g(term(plan(monthly_price=D("5.00"), bill_by_list=True)),
           objects=(ObjectAssignment("site", "alpha", OPEN, site="s1"),)),
         (("plan", "5.00"),), "5.00",
         lists=(ListUsage("alpha", "in", site="s1"), ListUsage("alpha", "out", site="s2"))),
    # §2 "No line when zero": 1,000 units over, CPM 0.0040: 1 x 0.004 = 0.004, 0.00 at cents.
    Case("Standard overage worth less than a cent: no overage line",
         g(term(plan(monthly_price=D("10.00"), overage_cpm=D("0.0040")))),
         (("plan", "10.00"),), "10.00", lists=(ListUsage("alpha", "l1", recipients=1000),)),
    # §2 Bill by List No: "one line Monthly Price x f" per plan assignment, paid lists or not.
    Case("Bill by List No with no paid object: the plan line 10.00 x 31/31 stays",
         g(term(plan(monthly_price=D("10.00"))), objects=()), (("plan", "10.00"),), "10.00"),
    # §1 days = End - Start + 1: 15 Jan..14 Feb 2026 = 17 + 14 = 31 days; plan from 1 Feb:
    # 14 days, 31.00 x 14/31 = 14.00.
    Case("a period across a month boundary, 15 Jan-14 Feb: 31 days, plan from 1 Feb 14/31",
         g(term(plan(monthly_price=D("31.00")), date(2026, 2, 1))), (("plan", "14.00"),),
         "14.00", period=Period(date(2026, 1, 15), date(2026, 2, 14))),
    # A one-day period (29 Feb 2028): days = 1, f = 1/1: 29.00.
    Case("a one-day period, 29 Feb 2028: f = 1/1",
         g(term(plan(monthly_price=D("29.00")))), (("plan", "29.00"),), "29.00",
         period=Period(date(2028, 2, 29), date(2028, 2, 29))),
    # Leap February: a plan ending 28 Feb 2028 is in force 28 of 29 days: 29.00 x 28/29.
    Case("leap February, plan ends the 28th: 29.00 x 28/29 = 28.00",
         g(term(plan(monthly_price=D("29.00")), end=date(2028, 2, 28))), (("plan", "28.00"),),
         "28.00", period=Period(date(2028, 2, 1), date(2028, 2, 29))),
    # End dates are inclusive: a plan ending 31 March bills all 31 days, one ending the 30th 30.
    Case("plan ends on the 31st of a 31-day month: 31/31",
         g(term(plan(monthly_price=D("31.00")), end=date(2026, 3, 31))), (("plan", "31.00"),),
         "31.00"),
    Case("plan ends on the 30th of a 31-day month: 31.00 x 30/31 = 30.00",
         g(term(plan(monthly_price=D("31.00")), end=date(2026, 3, 30))), (("plan", "30.00"),),
         "30.00"),
    # A 30-day month: a plan from 30 April is in force 1 of its 30 days.
    Case("a 30-day month: plan from the 30th, 30.00 x 1/30 = 1.00",
         g(term(plan(monthly_price=D("30.00")), date(2026, 4, 30))), (("plan", "1.00"),),
         "1.00", period=Period(date(2026, 4, 1), date(2026, 4, 30))),
    # §2 negative amounts, half up at cents away from zero: -0.45 x 1/30 = -0.015 -> -0.02;
    # 10.00 - 0.02 = 9.98.
    Case("a prorated credit's half cent rounds away from zero: -0.45 x 1/30 = -0.02",
         g(term(plan(monthly_price=D("10.00"))),
           charges=(charge("-0.45", recurring=True, prorate=True, start=date(2026, 4, 30)),)),
         (("plan", "10.00"), ("charge", "-0.02")), "9.98",
         period=Period(date(2026, 4, 1), date(2026, 4, 30))),
    # §2 Bandwidth: only servers with a paid object get lines; alpha is Is Free, beta paid:
    # 20.00 x 31/31; beta's 2 GB - 1 GB included = 1 GB x 0.50 = 0.50.
    Case("Bandwidth: an Is Free server has no lines, the paid one 20.00 and 0.50",
         g(term(plan(billing_method="bandwidth", monthly_price_per_server=D("20.00"),
                     included_gb=D("1"), cost_per_gb=D("0.50"))),
           objects=(server("alpha", free=True), server("beta"))),
         (("server", "20.00"), ("bandwidth", "0.50")), "20.50",
         lists=(ListUsage("alpha", "a1", bytes=9 * 10**9), ListUsage("beta", "b1",
                                                                      bytes=2 * 10**9))),
    # §2 overage "over the group's paid lists together" (Bill by List No): 600 + 600 = 1,200
    # units, 1,000 included: 200 / 1,000 x 5.00 = 1.00; per list it would be nothing.
    Case("Bill by List No pools the allowance: (600 + 600 - 1,000) / 1,000 x 5.00 = 1.00",
         g(term(plan(included_messages=1000, overage_cpm=D("5.00")))),
         (("plan", "0.00"), ("overage", "1.00")), "1.00",
         lists=(ListUsage("alpha", "l1", recipients=600), ListUsage("alpha", "l2",
                                                                   recipients=600))),
    Case("Bill by List Yes allows each list its own: 600 and 600 under 1,000 each, no overage",
         g(term(plan(included_messages=1000, overage_cpm=D("5.00"), bill_by_list=True))),
         (("plan", "0.00"), ("plan", "0.00")), "0.00",
         lists=(ListUsage("alpha", "l1", recipients=600), ListUsage("alpha", "l2",
                                                                   recipients=600))),
    # §2 recurring, not proratable, across a month boundary: one day (14 Feb) of 15 Jan..14 Feb
    # overlaps: the whole 12.00.
    Case("recurring, not proratable, overlapping one day of a cross-month period: 12.00",
         g(term(plan()), charges=(charge("12.00", recurring=True, start=date(2026, 2, 14)),)),
         (("plan", "0.00"), ("charge", "12.00")), "12.00",
         period=Period(date(2026, 1, 15), date(2026, 2, 14))),
    # §2 one-time charge with an end date: still billed once, in full, in the period of its
    # start date (its end date does not prorate it).
    Case("one-time charge with an end date: in full, 99.00",
         g(term(plan()), charges=(charge("99.00", recurring=False, start=date(2026, 3, 20),
                                         end=date(2026, 3, 21), key=4),)),
         (("plan", "0.00"), ("charge", "99.00")), "99.00", consumed=(4,)),
    # §2 carry-over: credits exactly equal to the charges: total 0.00, nothing carried.
    Case("credit equal to the charges: total 0.00, no carried-over line",
         g(term(plan(monthly_price=D("30.00"))),
           charges=(charge("-30.00", recurring=False, start=date(2026, 3, 1), key=5),)),
         (("plan", "30.00"), ("charge", "-30.00")), "0.00", consumed=(5,)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule(case: Case) -> None:
    draft = compute_invoice(case.period, case.customer, case.groups, case.lists,
                            case.carried_in)
    assert isinstance(draft, InvoiceDraft), draft
    assert [(line.kind, str(line.amount)) for line in draft.lines] == list(case.lines)
    assert str(draft.total) == case.total
    assert str(draft.carried_over) == case.carried_over
    assert draft.consumed_charges == case.consumed
    if case.units:
        assert tuple(str(row.units) for row in draft.usage) == case.units


def test_lines_carry_quantity_unit_price_and_the_spec_labels() -> None:
    draft = compute_invoice(
        MAR, ACME, g(term(plan(monthly_price=D("31.00")), date(2026, 3, 17))), (),
        CarriedCredit("2026-00042", D("40.00")))
    assert isinstance(draft, InvoiceDraft)
    first, carried_from, carried_to = draft.lines
    assert (first.group, first.quantity, first.unit_price) == ("Main", D("0.484"), D("31.00"))
    assert carried_from.description == "Credit carried over from invoice 2026-00042"
    assert carried_to.description == "Credit carried over to the next invoice"
    assert (carried_from.group, carried_to.amount) == ("", D("25.00"))


SKIPS = [
    ("Payment Method Free", Customer("Acme", payment_method=" free "), g(term(plan())), "free"),
    ("inactive without End Date", Customer("Acme", is_active=False), g(term(plan())),
     "inactive"),
    ("inactive, End Date after the period", Customer("Acme", is_active=False,
                                                     end_date=date(2026, 4, 1)),
     g(term(plan())), "inactive"),
    ("End Date before the period", Customer("Acme", end_date=date(2026, 2, 28)),
     g(term(plan())), "ended"),
    ("Start Date after the period", Customer("Acme", start_date=date(2026, 4, 1)),
     g(term(plan())), "not_started"),
    ("no billing group", ACME, (), "no_group"),
    ("paid objects, no plan for the period", ACME,
     g(term(plan(), end=date(2026, 2, 28))), "no_plan"),
    ("no plan and no charges", ACME, g(objects=()), "no_plan"),
    ("§4: charges but no hosting plan for the period", ACME,
     (Group("Setup", charges=(charge("50.00", recurring=False, start=date(2026, 3, 1)),)),),
     "no_plan"),
    ("§4: recurring charge, plan ended before the period", ACME,
     g(term(plan(), end=date(2026, 2, 28)), objects=(),
       charges=(charge("12.00", recurring=True),)), "no_plan"),
]


@pytest.mark.parametrize(("customer", "groups", "code"), [s[1:] for s in SKIPS],
                         ids=[s[0] for s in SKIPS])
def test_skip(customer: Customer, groups: tuple[Group, ...], code: str) -> None:
    result = compute_invoice(MAR, customer, groups, ())
    assert isinstance(result, Skip)
    assert result.code == code
    assert result.message


@pytest.mark.parametrize(("value", "places", "expected"), [
    (Fraction(15, 1000), 2, "0.02"), (Fraction(-15, 1000), 2, "-0.02"),
    (Fraction(14999, 1000000), 2, "0.01"), (Fraction(1, 3), 3, "0.333"),
    (Fraction(0), 2, "0.00"), (Fraction(2, 3), 2, "0.67"),
])
def test_round_half_up(value: Fraction, places: int, expected: str) -> None:
    assert str(round_half_up(value, places)) == expected


# --- The property ---------------------------------------------------------------------------

money = st.decimals(min_value=D("-500"), max_value=D("500"), places=2,
                    allow_nan=False, allow_infinity=False)
price = st.decimals(min_value=D("0"), max_value=D("500"), places=2,
                    allow_nan=False, allow_infinity=False)
rate = st.decimals(min_value=D("0"), max_value=D("50"), places=4,
                   allow_nan=False, allow_infinity=False)
day_offset = st.integers(min_value=-40, max_value=70)
BASE = date(2028, 2, 1)


@st.composite
def span(draw: st.DrawFn) -> tuple[date, date | None]:
    start = BASE + timedelta(days=draw(day_offset))
    length = draw(st.none() | st.integers(min_value=0, max_value=60))
    return start, (None if length is None else start + timedelta(days=length))


@st.composite
def plans(draw: st.DrawFn) -> PlanTerm:
    start, end = draw(span())
    p = Plan(
        name="P", billing_method=draw(st.sampled_from(["standard", "bandwidth"])),
        bill_by_list=draw(st.booleans()), monthly_price=draw(price), overage_cpm=draw(rate),
        included_messages=draw(st.integers(0, 5000)),
        max_message_size_kb=draw(st.integers(0, 64)),
        monthly_price_per_server=draw(price), cost_per_gb=draw(rate),
        included_gb=draw(st.decimals(min_value=D("0"), max_value=D("10"), places=3,
                                     allow_nan=False, allow_infinity=False)),
    )
    return PlanTerm(p, start, end)


@st.composite
def objects(draw: st.DrawFn) -> ObjectAssignment:
    start, end = draw(span())
    kind = draw(st.sampled_from(["server", "site", "list"]))
    return ObjectAssignment(kind, draw(st.sampled_from(["alpha", "beta"])), start, end,
                            site=draw(st.sampled_from(["", "s1"])),
                            list_name=draw(st.sampled_from(["l1", "l2", "l3"])),
                            is_free=draw(st.booleans()))


@st.composite
def charges(draw: st.DrawFn) -> ChargeTerm:
    start, end = draw(span())
    return ChargeTerm(draw(st.integers(1, 9)), "C", draw(money), draw(st.booleans()),
                      draw(st.booleans()), start, end, already_billed=draw(st.booleans()))


usages = st.builds(
    ListUsage, server=st.sampled_from(["alpha", "beta"]), name=st.sampled_from(["l1", "l2"]),
    site=st.sampled_from(["", "s1"]), messages=st.integers(0, 10**6),
    recipients=st.integers(0, 10**7), bytes=st.integers(0, 10**12))


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(-5, 5), length=st.integers(0, 40),
    groups=st.lists(st.builds(Group, name=st.sampled_from(["G1", "G2"]),
                              plans=st.lists(plans(), max_size=2).map(tuple),
                              objects=st.lists(objects(), max_size=4).map(tuple),
                              charges=st.lists(charges(), max_size=3).map(tuple)),
                    min_size=1, max_size=2),
    lists=st.lists(usages, max_size=4),
    carried=st.none() | st.decimals(min_value=D("0.01"), max_value=D("900"), places=2,
                                    allow_nan=False, allow_infinity=False),
)
def test_any_invoice_adds_up_and_is_never_negative(
    start: int, length: int, groups: list[Group], lists: list[ListUsage],
    carried: Decimal | None,
) -> None:
    period_start = BASE + timedelta(days=start)
    period = Period(period_start, period_start + timedelta(days=length))
    carry = CarriedCredit("2028-00001", carried) if carried is not None else None
    result = compute_invoice(period, ACME, groups, lists, carry)
    if isinstance(result, Skip):
        assert result.code == "no_plan"
        return
    assert result.total >= 0
    assert result.total == sum((line.amount for line in result.lines), D("0"))
    assert result.carried_over >= 0
    for line in result.lines:
        for value in (line.amount, line.quantity, line.unit_price):
            assert isinstance(value, Decimal)
        assert line.amount == line.amount.quantize(D("0.01"))
        assert line.amount.as_tuple().exponent == -2
        assert line.quantity == line.quantity.quantize(D("0.001"))
    assert result.total.as_tuple().exponent == -2
    for row in result.usage:
        assert isinstance(row.units, Decimal) and row.units >= 0
