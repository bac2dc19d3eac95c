"""The money property across databases (issue 14 item 9): random plans, charges, dates and usage
run through the real bill-run service (a simulated server, synced; two consecutive periods, so
carried credits too) on SQLite, PostgreSQL and MariaDB. Every stored total is an exact decimal
of 2 places, never negative, the sum of its lines, the total the run computed; and the same
inputs give the same invoices (numbers, lines, amounts) on all three databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import EXTERNAL_DATABASES, build_app, reset_schema, skip_or_fail
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lm_billing_plugin.billing.runs import bill_customers
from lm_billing_plugin.catalog.assignment import assign
from lm_billing_plugin.catalog.groups import create_group, set_group_plan
from lm_billing_plugin.models import Base, Invoice, InvoiceLine, MailingList
from lm_billing_plugin.state import get_state
from lm_billing_plugin.testing.simulator import HostSim
from tests._billing import add_server, charge, customer, dataset, plan

LISTS = ("l1", "l2", "l3")
YEAR_START = date(2026, 1, 1)


def _money(lo: int, hi: int, places: int = 2) -> st.SearchStrategy[Decimal]:
    return st.integers(lo, hi).map(lambda n: Decimal(n).scaleb(-places))


@dataclass(frozen=True)
class Case:
    plan: dict[str, Any]
    period_a: tuple[date, date]
    period_b: tuple[date, date]
    assign_start: date
    whole_server: bool
    lists: tuple[str, ...]
    charges: tuple[tuple[str, date, bool, bool, date | None], ...]
    sends: tuple[tuple[str, date, int, int], ...]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    method = draw(st.sampled_from(["standard", "bandwidth"]))
    plan_values = {
        "billing_method": method, "bill_by_list": draw(st.booleans()),
        "monthly_price": draw(_money(0, 50_000)),
        "overage_cpm": draw(_money(0, 100_000, 4)),
        "included_messages": draw(st.integers(0, 50_000)),
        "max_message_size_kb": draw(st.sampled_from([0, 0, 40, 100])),
        "monthly_price_per_server": draw(_money(0, 20_000)),
        "cost_per_gb": draw(_money(0, 50_000, 4)),
        "included_gb": draw(_money(0, 2_000, 3)),
    }
    a_start = YEAR_START + timedelta(days=draw(st.integers(31, 250)))
    a_end = a_start + timedelta(days=draw(st.integers(0, 40)))
    b_start = a_end + timedelta(days=1)
    b_end = b_start + timedelta(days=draw(st.integers(0, 40)))
    assign_start = YEAR_START + timedelta(days=draw(st.integers(0, (a_end - YEAR_START).days)))
    day = st.integers(-20, (b_end - a_start).days + 20).map(
        lambda d: a_start + timedelta(days=d))
    charges = tuple(
        (amount, start, recurring, proratable,
         None if length is None else start + timedelta(days=length))
        for amount, start, recurring, proratable, length in draw(st.lists(st.tuples(
            _money(-30_000, 30_000).map(str), day, st.booleans(), st.booleans(),
            st.none() | st.integers(0, 60)), max_size=3)))
    sends = tuple(draw(st.lists(st.tuples(st.sampled_from(LISTS), day,
                                          st.integers(0, 200_000), st.integers(0, 300_000)),
                                max_size=6)))
    return Case(plan_values, (a_start, a_end), (b_start, b_end), assign_start,
                draw(st.booleans()), tuple(draw(st.lists(st.sampled_from(LISTS), min_size=1,
                                                         max_size=3, unique=True))),
                charges, sends)


def _urls(tmp: str) -> list[tuple[str, str]]:
    urls = [("sqlite", f"sqlite:///{tmp}/money.sqlite")]
    for name, env in EXTERNAL_DATABASES.items():
        if os.environ.get(env):
            urls.append((name, os.environ[env]))
    return urls


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, Flask]]]:
    made: list[tuple[str, Flask]] = []
    for name, url in _urls(str(tmp_path_factory.mktemp("money"))):
        if name != "sqlite":
            try:
                reset_schema(url)
            except sa.exc.OperationalError:
                continue  # test_all_three_databases_take_part says so
        made.append((name, build_app(url)))
    yield made
    for name, app in made:
        with app.app_context():
            engine = app.extensions["sqlalchemy"].engine
            if name != "sqlite":
                Base.metadata.drop_all(engine)
            engine.dispose()


def test_all_three_databases_take_part(apps: list[tuple[str, Flask]]) -> None:
    missing = {"sqlite", *EXTERNAL_DATABASES} - {name for name, _ in apps}
    if missing:
        skip_or_fail(f"the money property ran without {sorted(missing)}: set "
                     f"{', '.join(EXTERNAL_DATABASES[m] for m in sorted(missing))}",
                     external_db=True)


def _wipe(name: str) -> None:
    session = get_state().session
    tables = list(reversed(Base.metadata.sorted_tables))
    if name == "postgresql":
        session.execute(sa.text("TRUNCATE TABLE " + ", ".join(t.name for t in tables)
                                + " RESTART IDENTITY CASCADE"))
    else:
        if name == "mariadb":
            session.execute(sa.text("SET FOREIGN_KEY_CHECKS=0"))
        session.execute(sa.update(Invoice).values(carried_from_id=None))
        for table in tables:
            session.execute(sa.delete(table))
        if name == "mariadb":
            session.execute(sa.text("SET FOREIGN_KEY_CHECKS=1"))
    session.commit()


def _bill(case: Case, sim: HostSim) -> tuple[list[Any], list[Decimal]]:
    """Set the case up through the services, bill both periods; (stored invoices, totals the
    runs computed)."""
    sid = add_server(sim)
    plan_id = plan("Random", **case.plan)
    cu = customer("Acme")
    group = create_group(cu, {"name": "Main"}, actor="t")
    set_group_plan(group, plan_id, YEAR_START, None, actor="t")
    session = get_state().session
    ids = list(session.scalars(sa.select(MailingList.id).where(
        MailingList.server_id == sid, MailingList.name.in_(case.lists))))
    assign(group.id, server_id=sid, list_ids=[] if case.whole_server else ids,
           whole_server=case.whole_server, actor="t", start=case.assign_start)
    for i, (amount, start, recurring, proratable, end) in enumerate(case.charges):
        charge(group.id, f"Charge {i}", amount, start, recurring=recurring,
               proratable=proratable, end=end)
    computed: list[Decimal] = []
    for start, end in (case.period_a, case.period_b):
        result = bill_customers(start, end, actor="t")
        assert result.exit_code == 0, [o.reason for o in result.outcomes]
        computed += [o.draft.total for o in result.outcomes
                     if o.status == "invoiced" and o.draft is not None]
    stored = []
    for inv in session.scalars(sa.select(Invoice).order_by(Invoice.period_start)):
        lines = list(session.scalars(sa.select(InvoiceLine)
                                     .where(InvoiceLine.invoice_id == inv.id)
                                     .order_by(InvoiceLine.position)))
        stored.append((inv.number, inv.period_start, inv.period_end, inv.total,
                       inv.carried_over,
                       [(li.group_name, li.kind, li.description, li.quantity, li.unit_price,
                         li.amount) for li in lines]))
    session.commit()
    return stored, computed


@settings(max_examples=int(os.environ.get("LM_BILLING_MONEY_EXAMPLES", "6")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=cases())
def test_money_is_exact_and_the_same_on_every_database(
        apps: list[tuple[str, Flask]], case: Case) -> None:
    with HostSim(dataset(len(LISTS))) as sim:
        for name, day, recipients, size in case.sends:
            sim.add_send(name, day, recipients, size)
        results: dict[str, list[Any]] = {}
        for name, app in apps:
            with app.app_context():
                _wipe(name)
                stored, computed = _bill(case, sim)
            results[name] = stored
            assert [s[3] for s in stored] == computed, name  # stored as computed, exactly
            for number, _start, _end, total, carried, lines in stored:
                assert isinstance(total, Decimal) and total.as_tuple().exponent == -2, total
                assert total >= 0 and carried >= 0, (name, number, total)
                assert total == sum((line[5] for line in lines), Decimal("0")), (name, lines)
                for line in lines:
                    assert line[5] == line[5].quantize(Decimal("0.01"))
    first_name, first = next(iter(results.items()))
    for name, stored in results.items():
        assert stored == first, f"{name} billed differently from {first_name}"
