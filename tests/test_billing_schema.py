"""The billing-cycle tables (migration 0002) on SQLite, PostgreSQL and MariaDB: the upgrade
seeds each group's plan history and keeps old rows, the downgrade returns to 0001 intact,
and the unique guarantees (one non-void invoice per period, charge names, numbers) hold."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from lm_billing_plugin import downgrade, upgrade
from lm_billing_plugin.migrate import current
from lm_billing_plugin.models import (
    AdditionalCharge,
    Customer,
    Invoice,
    charge_name_key,
    invoice_active_key,
)
from lm_billing_plugin.state import get_state

CREATED = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


def engine_of(app: Flask) -> sa.Engine:
    with app.app_context():
        return get_state(app).db.engine


@pytest.fixture
def bare_app(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    yield make_app(db_url, create_tables=False)


def test_upgrade_seeds_plan_history_and_downgrade_returns_to_0001(bare_app: Flask) -> None:
    engine = engine_of(bare_app)
    upgrade(bare_app, "0001")
    stamp = CREATED.replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO lm_billing_customer (id, company, contact_name, email, is_active,"
            " payment_method, notes, created_at) VALUES (1, 'Acme', '', '', :t, '', '', :at)"
        ), {"t": True, "at": stamp})
        conn.execute(sa.text(
            "INSERT INTO lm_billing_plan (id, name, description, max_members,"
            " max_members_per_list, max_lists, max_lists_per_site, max_sites, bill_by_list,"
            " billing_method, monthly_price, overage_cpm, included_messages,"
            " max_message_size_kb, monthly_price_per_server, cost_per_gb, included_gb)"
            " VALUES (1, 'Basic', '', 0, 0, 0, 0, 0, :f, 'standard', 10, 0, 0, 0, 0, 0, 0)"
        ), {"f": False})
        conn.execute(sa.text(
            "INSERT INTO lm_billing_group (id, customer_id, name, plan_id, plan_start, plan_end,"
            " created_at) VALUES (1, 1, 'dated', 1, :s, :e, :at), (2, 1, 'undated', 1, NULL,"
            " NULL, :at), (3, 1, 'no plan', NULL, NULL, NULL, :at)"
        ), {"s": date(2026, 2, 1), "e": date(2026, 6, 30), "at": stamp})
        conn.execute(sa.text(
            "INSERT INTO lm_billing_server (id, name, host, port, comments, active, status,"
            " status_message, created_at, updated_at) VALUES (1, 'alpha', 'a.test', 2021, '',"
            " :t, 'ok', '', :at, :at)"
        ), {"t": True, "at": stamp})
        conn.execute(sa.text(
            "INSERT INTO lm_billing_assignment (group_id, object_type, server_id, start_date,"
            " created_at) VALUES (1, 'server', 1, :s, :at)"
        ), {"s": date(2026, 2, 1), "at": stamp})

    upgrade(bare_app, "0002")  # this test is about 0002 migrating 0001 data
    assert current(bare_app) == "0002"
    with engine.connect() as conn:
        history = conn.execute(sa.text(
            "SELECT group_id, plan_id, start_date, end_date FROM lm_billing_group_plan"
            " ORDER BY group_id"
        )).all()
        free = conn.execute(sa.text("SELECT is_free FROM lm_billing_assignment")).scalar_one()
        customer = conn.execute(sa.text(
            "SELECT start_date, end_date, additional_emails, customer_type"
            " FROM lm_billing_customer"
        )).one()
    as_dates = [(g, p, _day(s), _day(e) if e else None) for g, p, s, e in history]
    assert as_dates == [(1, 1, date(2026, 2, 1), date(2026, 6, 30)),
                        (2, 1, date(2026, 1, 5), None)]
    assert not free
    assert tuple(customer) == (None, None, "", "")

    downgrade(bare_app, "0001")
    assert current(bare_app) == "0001"
    inspector = sa.inspect(engine)
    assert "lm_billing_invoice" not in inspector.get_table_names()
    assert "is_free" not in {c["name"] for c in inspector.get_columns("lm_billing_assignment")}
    assert "end_date" not in {c["name"] for c in inspector.get_columns("lm_billing_customer")}
    # The rows survive, and SQLite's table rebuild kept the assignment's check constraint.
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM lm_billing_assignment")).scalar() == 1
    with pytest.raises(sa.exc.DBAPIError, match=r"(?i)ck_lm_billing_assignment_object|check"), \
            engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO lm_billing_assignment (group_id, object_type, server_id, start_date,"
            " created_at) VALUES (1, 'list', 1, :s, :at)"
        ), {"s": date(2026, 2, 1), "at": stamp})
    downgrade(bare_app)


def _day(value: object) -> date:
    # SQLite hands back raw text from a textual SELECT.
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _invoice(customer_id: int, seq: int, *, void: bool = False,
             start: date = date(2026, 3, 1), end: date = date(2026, 3, 31)) -> Invoice:
    return Invoice(
        number=f"2026-{seq:05d}", year=2026, seq=seq, customer_id=customer_id,
        period_start=start, period_end=end, status="void" if void else "issued",
        active_key=None if void else invoice_active_key(customer_id, start, end),
        currency="EUR", total=Decimal("12.34"), company="Acme",
    )


def _rejected(session: Session, *objects: object) -> bool:
    session.add_all(objects)
    try:
        session.commit()
    except sa.exc.DBAPIError:  # IntegrityError, or PyMySQL's OperationalError for a CHECK
        session.rollback()
        return True
    return False


def test_unique_guarantees_hold_on_every_backend(bare_app: Flask) -> None:
    upgrade(bare_app)
    with bare_app.app_context():
        session = get_state(bare_app).session
        acme = Customer(company="Acme")
        session.add(acme)
        session.commit()
        cid = acme.id
        assert not _rejected(session, _invoice(cid, 1))
        assert _rejected(session, _invoice(cid, 2)), "a second non-void invoice for a period"
        assert not _rejected(session, _invoice(cid, 3, void=True)), "void invoices never clash"
        assert not _rejected(session, _invoice(cid, 4, void=True))
        assert not _rejected(session, _invoice(cid, 5, end=date(2026, 3, 30)))
        assert _rejected(session, _invoice(cid, 1, end=date(2026, 3, 15))), "number reused"
        # Voided and re-run: the period frees up once its invoice is void.
        first = session.scalars(sa.select(Invoice).filter_by(seq=1)).one()
        first.status, first.active_key = "void", None
        session.commit()
        assert not _rejected(session, _invoice(cid, 6))
        # Status and active_key move together.
        inconsistent = _invoice(cid, 7, start=date(2026, 4, 1), end=date(2026, 4, 30))
        inconsistent.status = "void"
        assert _rejected(session, inconsistent)
        unknown_status = _invoice(cid, 8, start=date(2026, 5, 1))
        unknown_status.status = "paid"
        assert _rejected(session, unknown_status)

        def charge(name: str) -> AdditionalCharge:
            return AdditionalCharge(name=name, name_key=charge_name_key(name),
                                    default_amount=Decimal("5.00"))

        assert not _rejected(session, charge("Setup Fee"))
        assert _rejected(session, charge("setup  FEE "))
        assert not _rejected(session, charge("Setup Fees"))
        stored = session.scalars(sa.select(AdditionalCharge.default_amount)).all()
        assert stored == [Decimal("5.00"), Decimal("5.00")]


@pytest.mark.parametrize(("name", "key"), [
    ("Setup Fee", "setupfee"), ("  setup\tfee ", "setupfee"), ("SETUP-Fee", "setup-fee"),
    ("Straße", "strasse"),
])
def test_charge_name_key_ignores_case_and_space(name: str, key: str) -> None:
    assert charge_name_key(name) == key
