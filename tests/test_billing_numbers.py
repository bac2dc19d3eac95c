"""Invoice numbers: gapless per year, given back by a rollback, formatted by
LM_BILLING_INVOICE_NUMBER_FORMAT, and distinct and consecutive under concurrent runs."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from lm_billing_plugin.billing.numbers import format_number, next_invoice_number, take_number
from lm_billing_plugin.settings import Settings
from lm_billing_plugin.state import get_state


def engine_of(app: Flask) -> sa.Engine:
    with app.app_context():
        return get_state(app).db.engine


@pytest.mark.parametrize(("fmt", "expected"), [
    ("{year}-{seq:05d}", "2026-00042"), ("INV/{year}/{seq}", "INV/2026/42"),
    ("{seq:06d}/{year}", "000042/2026"),
])
def test_format(fmt: str, expected: str) -> None:
    assert format_number(2026, 42, fmt) == expected


@pytest.mark.parametrize("fmt", ["{seq:06d}", "INV-{seq}", "{year}", "INV", "{year}-{nope}",
                                 "{year}-" + "x" * 40 + "{seq}"])
def test_a_format_without_year_and_seq_is_refused_at_start(fmt: str) -> None:
    """Each year's sequence starts at 1 (billing-cycle.md §3): without {year}, 2027's first
    invoice would print 2026's first number again and the unique number would refuse it."""
    with pytest.raises(ValueError, match="LM_BILLING_INVOICE_NUMBER_FORMAT"):
        Settings.from_config({"LM_BILLING_INVOICE_NUMBER_FORMAT": fmt})


@pytest.mark.parametrize("fmt", ["{year}-{seq:05d}", "{seq:06d}/{year}", "INV/{year}/{seq}"])
def test_a_format_with_year_and_seq_is_taken(fmt: str) -> None:
    assert Settings.from_config({"LM_BILLING_INVOICE_NUMBER_FORMAT": fmt}
                                ).invoice_number_format == fmt


def test_numbers_are_gapless_per_year_and_a_rollback_gives_one_back(any_db_app: Flask) -> None:
    engine = engine_of(any_db_app)
    with Session(engine) as session, session.begin():
        assert next_invoice_number(session, 2026) == (1, "2026-00001")
        assert next_invoice_number(session, 2026) == (2, "2026-00002")
        assert next_invoice_number(session, 2027) == (1, "2027-00001")
    with Session(engine) as session:
        session.begin()
        assert take_number(session, 2026) == 3
        session.rollback()
    with Session(engine) as session, session.begin():
        assert take_number(session, 2026) == 3


@pytest.mark.parametrize("prime", [False, True], ids=["new year", "existing year"])
def test_concurrent_transactions_get_distinct_consecutive_numbers(
    any_db_app: Flask, prime: bool
) -> None:
    """The second taker waits for the first transaction (its row lock, or SQLite's write
    lock), then continues after the first one's number."""
    engine = engine_of(any_db_app)
    if prime:
        with Session(engine) as session, session.begin():
            take_number(session, 2026)
    base = 1 if prime else 0
    first_taken, first_may_commit = threading.Event(), threading.Event()
    got: dict[str, int] = {}
    second_done_at: list[float] = []

    def first() -> None:
        with Session(engine) as session, session.begin():
            got["first"] = take_number(session, 2026)
            first_taken.set()
            first_may_commit.wait(10)

    def second() -> None:
        first_taken.wait(10)
        with Session(engine) as session, session.begin():
            got["second"] = take_number(session, 2026)
        second_done_at.append(time.monotonic())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    assert "second" not in got, "the second transaction must wait for the first"
    released_at = time.monotonic()
    first_may_commit.set()
    for thread in threads:
        thread.join(20)
    assert got == {"first": base + 1, "second": base + 2}
    assert second_done_at[0] >= released_at


@pytest.mark.parametrize("code", ["ABC", "EURO", "US", "", "€"])
def test_a_currency_that_is_not_iso_4217_is_refused_at_start(code: str) -> None:
    """billing-cycle.md §3: the invoice's currency is LM_BILLING_CURRENCY, ISO 4217 (ABC has
    the shape of a code but is none)."""
    with pytest.raises(ValueError, match="LM_BILLING_CURRENCY must be an ISO 4217 code"):
        Settings.from_config({"LM_BILLING_CURRENCY": code})


@pytest.mark.parametrize(("code", "taken"), [("EUR", "EUR"), (" chf ", "CHF"), ("JPY", "JPY")])
def test_an_iso_4217_currency_is_taken(code: str, taken: str) -> None:
    assert Settings.from_config({"LM_BILLING_CURRENCY": code}).currency == taken
