"""Problem text is bounded on every database (issue 14): MariaDB's TEXT holds 65,535 bytes, so
a problem built from what a peer sent (huge names) would fail with DataError there and block
the server. The detail and object name are cut at engine.store.MAX_TEXT_BYTES on a character
boundary, with an ellipsis, the same on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.engine.reconcile import Found
from lm_billing_plugin.engine.store import ELLIPSIS, MAX_TEXT_BYTES, bounded_text, record_problems
from lm_billing_plugin.models import Problem, Server
from lm_billing_plugin.state import get_state

MARIADB_TEXT = 65_535


@pytest.mark.parametrize("char", ["a", "é", "名", "😀"])  # 1, 2, 3 and 4 bytes in UTF-8
def test_bounded_text_cuts_on_a_character_boundary_with_an_ellipsis(char: str) -> None:
    width = len(char.encode())
    fits = char * (MAX_TEXT_BYTES // width)
    assert bounded_text(fits) is fits  # at the limit: unchanged
    over = char * (MAX_TEXT_BYTES // width + 1)
    cut = bounded_text(over)
    data = cut.encode()
    assert len(data) <= MAX_TEXT_BYTES
    assert cut.endswith(ELLIPSIS) and set(cut[:-1]) == {char}  # no half character
    assert len(data) > MAX_TEXT_BYTES - width - len(ELLIPSIS.encode())  # as long as fits


def test_small_limits_and_empty_text() -> None:
    assert bounded_text("") == ""
    assert bounded_text("abcdef", 4) == "a" + ELLIPSIS
    # 7 bytes: the ellipsis (3) leaves 4, one emoji; 6 bytes leave 3: no emoji fits.
    assert bounded_text("😀😀", 7) == "😀" + ELLIPSIS
    assert bounded_text("😀😀", 6) == ELLIPSIS


def test_multibyte_problem_text_over_the_mariadb_limit_is_stored_bounded(
    make_app: Callable[..., Flask], db_url: str,
) -> None:
    """A detail of 70,000 bytes (35,000 two-byte characters) and an object name of 75,000
    bytes (three-byte characters), each over MariaDB's 65,535: stored, cut, no DataError; the
    next run finding the same problem leaves the row as it is."""
    app = make_app(db_url)
    with app.app_context():
        session = get_state().session
        server = Server(name="Lists", host="127.0.0.1", port=2021)
        session.add(server)
        session.commit()
        detail = "é" * 35_000
        name = "名" * 25_000
        assert len(detail.encode()) > MARIADB_TEXT and len(name.encode()) > MARIADB_TEXT
        found = Found(kind="invalid_field", object_type="list", object_name=name,
                      detail=detail, data={}, fingerprint="f" * 64)
        now = datetime.now(UTC)
        record_problems(session, server.id, None, [found], now)
        session.commit()
        row = session.scalars(sa.select(Problem)).one()
        stored_detail, stored_name, problem_id = row.detail, row.object_name, row.id
        session.commit()
        for text, char in ((stored_detail, "é"), (stored_name, "名")):
            assert len(text.encode()) <= MAX_TEXT_BYTES < MARIADB_TEXT
            assert text.endswith(ELLIPSIS) and set(text[:-1]) == {char}
        assert stored_detail == bounded_text(detail)

        # Found again: same bounded text, so no refresh and no reopen; still one row.
        record_problems(session, server.id, None, [found], now)
        session.commit()
        rows = session.execute(sa.select(Problem.id, Problem.detail)).all()
        session.commit()
        assert rows == [(problem_id, stored_detail)]
