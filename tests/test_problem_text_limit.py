"""Problem text is bounded on every database (issue 14): MariaDB's TEXT holds 65,535 bytes, so
a problem built from what a peer sent (huge names) would fail with DataError there and block
the server. The detail and object name are cut at engine.store.MAX_TEXT_BYTES on a character
boundary, with an ellipsis, the same on SQLite, PostgreSQL and MariaDB; so are a server's
status message and a delete run's per-membership message (models.BoundedText)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.engine import batches, deletions, lookups
from lm_billing_plugin.engine.reconcile import Found
from lm_billing_plugin.engine.store import ELLIPSIS, MAX_TEXT_BYTES, bounded_text, record_problems
from lm_billing_plugin.models import DeleteRunItem, Problem, Server
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import SiteRecord
from lm_billing_plugin.testing.simulator import Dataset, HostSim, _Err

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


# --- A server's status message (Server.status_message, models.BoundedText) -----------------


class _HugeErrorSim(HostSim):
    """A server whose every "server info" answer is an error with a 90,000-byte message of
    three-byte characters: what a peer could send to blow MariaDB's TEXT."""

    def handle(self, logical: str, args: Sequence[str]) -> str:
        if logical == "server_info":
            raise _Err("INTERNAL", "名" * 30_000)
        return super().handle(logical, args)


def _status_message(server_id: int) -> str:
    session = get_state().session
    text = session.scalar(sa.select(Server.status_message).where(Server.id == server_id))
    session.commit()
    assert text is not None
    return text


def _assert_bounded(text: str, char: str) -> None:
    assert len(text.encode()) <= MAX_TEXT_BYTES < MARIADB_TEXT
    assert text.endswith(ELLIPSIS) and set(text[:-1]) == {char}


def test_server_status_message_over_the_mariadb_limit_is_stored_bounded_on_every_path(
    make_app: Callable[..., Flask], db_url: str,
) -> None:
    """Insert, ORM attribute and Core update each store a multi-byte status message over
    MariaDB's 65,535 bytes cut at MAX_TEXT_BYTES (no DataError); a short one is unchanged."""
    app = make_app(db_url)
    with app.app_context():
        session = get_state().session
        server = Server(name="Lists", host="127.0.0.1", port=2021,
                        status_message="é" * 35_000)  # 70,000 bytes
        session.add(server)
        session.commit()
        sid = server.id
        _assert_bounded(_status_message(sid), "é")
        server = session.get(Server, sid)
        assert server is not None
        server.status_message = "😀" * 20_000  # 80,000 bytes
        session.commit()
        _assert_bounded(_status_message(sid), "😀")
        session.execute(sa.update(Server).where(Server.id == sid)
                        .values(status_message="名" * 25_000))  # 75,000 bytes
        session.commit()
        stored = _status_message(sid)
        _assert_bounded(stored, "名")
        assert stored == bounded_text("名" * 25_000)
        session.execute(sa.update(Server).where(Server.id == sid)
                        .values(status_message="refused: wrong password"))
        session.commit()
        assert _status_message(sid) == "refused: wrong password"


def test_a_validation_failing_with_a_huge_peer_error_stores_it_bounded(
    make_app: Callable[..., Flask], db_url: str,
) -> None:
    """A real validation over a real socket, the server answering with a 90,000-byte error
    message: the batch ends (no DataError on MariaDB), the server's status message (and the
    run's error message, which also carries it) is the error cut at MAX_TEXT_BYTES."""
    app = make_app(db_url)
    with _HugeErrorSim(Dataset(sites=[SiteRecord("s1", "Site 1")])) as sim, \
            app.app_context():
        session = get_state().session
        server = Server(name="Lists", host=sim.host, port=sim.port)
        session.add(server)
        session.commit()
        sid = server.id
        result = batches.validate_servers([sid], actor="t")
        assert result.exit_code != 0
        stored = _status_message(sid)
    assert len(stored.encode()) <= MAX_TEXT_BYTES
    assert stored.endswith(ELLIPSIS) and "名" * 100 in stored


# --- A delete run's per-membership message (DeleteRunItem.message, models.BoundedText) -----


class _HugeDeleteErrorSim(HostSim):
    """A server that refuses every delete_member with a 90,000-byte INTERNAL message."""

    def handle(self, logical: str, args: Sequence[str]) -> str:
        if logical == "delete_member":
            raise _Err("INTERNAL", "名" * 30_000)
        return super().handle(logical, args)


def test_a_delete_refused_with_a_huge_peer_error_stores_the_message_bounded(
    make_app: Callable[..., Flask], db_url: str,
) -> None:
    """A real delete run over a real socket, the server answering each delete with a
    90,000-byte error: the run finishes (no DataError on MariaDB), each membership is failed
    with the message cut at MAX_TEXT_BYTES like every other stored peer text (not at an own,
    shorter cap: more than 10,000 characters of the server's text are kept)."""
    app = make_app(db_url)
    email = "pat@example.org"
    dataset = Dataset(sites=[SiteRecord("s1", "Site 1")])
    with _HugeDeleteErrorSim(dataset) as sim, app.app_context():
        for name in ("l1", "l2"):
            sim.add_member(name, email)
        session = get_state().session
        server = Server(name="Lists", host=sim.host, port=sim.port)
        session.add(server)
        session.commit()
        result = deletions.delete_memberships(
            [lookups.Membership(server.id, name, email) for name in ("l1", "l2")],
            actor="test")
        assert [d.outcome for d in result.deletions] == ["failed", "failed"]
        assert {d.code for d in result.deletions} == {"INTERNAL"}
        stored = session.scalars(sa.select(DeleteRunItem.message)).all()
        session.commit()
    assert len(stored) == 2
    for text in stored:
        assert text is not None
        assert len(text.encode()) <= MAX_TEXT_BYTES < MARIADB_TEXT
        assert text.endswith(ELLIPSIS) and "名" * 100 in text
        assert len(text) > 10_000
    assert [d.message for d in result.deletions] == stored
