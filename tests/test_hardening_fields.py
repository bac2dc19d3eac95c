"""Values a hosting server sends that billing's columns cannot hold (too long, a NUL, a count
above 32 bits): one rule on SQLite, PostgreSQL and MariaDB; reported per object, rest stored."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from lm_billing_plugin.engine import batches, fixes
from lm_billing_plugin.engine.inventory import TEXT_BYTES, Inventory, Rejected, screen
from lm_billing_plugin.engine.reconcile import BillingSnapshot, ListRow, reconcile
from lm_billing_plugin.models import MailingList, Problem, Run, Server, Site
from lm_billing_plugin.state import get_state
from lm_billing_plugin.tclport.records import ListRecord, LoggingState, ServerInfo, SiteRecord
from lm_billing_plugin.testing.simulator import Dataset, HostSim

# No test here waits for a silent peer: patient, so a loaded CI machine cannot fail one.
PATIENT: dict[str, Any] = {
    "LM_BILLING_CONNECT_TIMEOUT": 10.0,
    "LM_BILLING_READ_TIMEOUT": 10.0,
    "LM_BILLING_OPERATION_TIMEOUT": 20.0,
    "LM_BILLING_SERVER_DEADLINE": 30.0,
}
LONG = "x" * 300


def good(name: str, site: str = "s1", **kw: Any) -> ListRecord:
    fields: dict[str, Any] = {"site": site, "descr": f"about {name}", "created": date(2020, 1, 1),
                              "members": 5, "admin": "o@example.com"}
    fields.update(kw)
    return ListRecord(name, fields["site"], fields["descr"], fields["created"],
                      fields["members"], fields["admin"])


# (field as named in the problem, words the message must hold, the bad list)
BAD_LISTS: list[tuple[str, str, ListRecord]] = [
    ("name", "list name 'nul\\x00name' containing a NUL character", good("nul\x00name")),
    ("name", "list name 'xxxx", good(LONG)),
    ("site", "site name of 300 characters (limit 255) for list 'in-long-site'",
     good("in-long-site", site="y" * 300)),
    ("admin", "list administrator of 321 characters (limit 320) for list 'long-admin'",
     good("long-admin", admin="a" * 309 + "@example.com")),
    ("descr", f"list description of 70,000 bytes (limit {TEXT_BYTES:,}) for list 'huge-descr'",
     good("huge-descr", descr="d" * 70_000)),
    ("members", "member count of 3,000,000,000 (limit 2,147,483,647) for list 'many'",
     good("many", members=3_000_000_000)),
]


@pytest.fixture
def dbapp(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    app = make_app(db_url, **PATIENT)
    with app.app_context():
        yield app


def open_invalid(server_id: int) -> dict[tuple[str, str], list[Any]]:
    session = get_state().session
    rows = session.execute(
        sa.select(Problem.object_type, Problem.data, Problem.detail, Problem.object_name)
        .where(Problem.server_id == server_id, Problem.status == "open",
               Problem.kind == "invalid_field")
    ).all()
    session.commit()
    out: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        out.setdefault((r.object_type, r.data["field"]), []).append(r)
    return out


def test_unstorable_values_are_reported_per_object_and_the_rest_is_stored(dbapp: Flask) -> None:
    dataset = Dataset(
        sites=[SiteRecord("s1", "Site one"), SiteRecord("z" * 256, "too long a site"),
               SiteRecord("nul-title", "bad\x00title")],
        lists=[good("fine-1"), good("fine-2", site="")] + [rec for _f, _w, rec in BAD_LISTS],
        version="12.3-" + "v" * 40, hostname="h" * 256,
    )
    sim = HostSim(dataset).start()
    try:
        sim.set_logging("m" * 41, "L" * 256)
        session = get_state().session
        server = Server(name="Odd data", host=sim.host, port=sim.port)
        session.add(server)
        session.commit()
        sid = server.id

        result = batches.sync_servers([sid], actor="tester")
        outcome = result.servers[0]
        assert outcome.ok, outcome.error  # no STORE failure on any database
        found = open_invalid(sid)
        expected_lists = {("list", f) for f, _w, _r in BAD_LISTS}
        assert expected_lists <= set(found)
        for fname, words, _rec in BAD_LISTS:
            matching = found["list", fname]
            assert any(words in p.detail for p in matching), (fname, [p.detail for p in matching])
            assert all("Odd data" in p.detail and "\x00" not in p.detail for p in matching)
        assert {("site", "name"), ("site", "title"), ("server", "version"),
                ("server", "hostname"), ("server", "mode"), ("server", "label")} <= set(found)
        assert "sent a version of 45 characters (limit 40)" in found["server", "version"][0].detail
        assert "host name of 256 characters (limit 255)" in found["server", "hostname"][0].detail
        assert "sent an Enable Logging mode of 41 characters" in found["server", "mode"][0].detail
        label = found["server", "label"][0].detail
        assert "sent an Enable Logging label of 256 characters" in label

        # The rest is stored: the good lists and site, the server's other fields.
        names = set(session.scalars(sa.select(MailingList.name)
                                    .where(MailingList.server_id == sid)))
        sites = set(session.scalars(sa.select(Site.name).where(Site.server_id == sid)))
        srv = session.get(Server, sid)
        assert names == {"fine-1", "fine-2"}
        assert sites == {"s1"}
        assert srv.synced_at is not None and srv.version == "" and srv.hostname_reported == ""
        session.commit()

        # Fixing cannot change what the server sends: it says what to do instead.
        pid = session.scalar(sa.select(Problem.id).where(Problem.kind == "invalid_field"))
        session.commit()
        item = fixes.fix_problems([pid], actor="tester").items[0]
        assert item.outcome == "not_fixable" and "hosting server" in (item.action or "")

        # Not blocked: corrected on the server, the next sync stores everything and resolves.
        for _f, _w, rec in BAD_LISTS:
            sim.remove_list(rec.name)
        sim.add_list("many", site="s1", members=2_000_000_000)
        sim.set_version("12.4")
        sim.set_logging("lists")
        result = batches.sync_servers([sid], actor="tester")
        assert result.servers[0].ok
        remaining = open_invalid(sid)
        assert set(remaining) == {("site", "name"), ("site", "title"), ("server", "hostname")}
        assert session.scalar(sa.select(MailingList.members)
                              .where(MailingList.name == "many")) == 2_000_000_000
        assert session.get(Server, sid).version == "12.4"
        assert session.scalar(sa.select(sa.func.count()).select_from(Run)
                              .where(Run.status == "failed")) == 0
        session.commit()
    finally:
        sim.stop()


def test_a_list_held_by_billing_is_not_taken_for_missing_when_its_new_value_is_unstorable(
) -> None:
    snapshot = BillingSnapshot(1, "srv", lists=(ListRow(7, "kept", "s1", "", 5, "a@b"),))
    inventory = screen(Inventory(
        ServerInfo("ListManager", "12.3", "h", None), LoggingState("lists", "Yes"),
        (SiteRecord("s1", ""),), (good("kept", admin="a" * 400),), (), date(2026, 1, 1),
        datetime(2026, 1, 1, tzinfo=UTC),
    ))
    assert inventory.lists == ()
    assert inventory.rejected == (Rejected(
        "list", "kept", "admin", "list administrator", "of 400 characters (limit 320)",
        {"reason": "length", "length": 400, "limit": 320}),)
    rec = reconcile(snapshot, inventory)
    kinds = [p.kind for p in rec.problems]
    assert "missing_list" not in kinds and kinds.count("invalid_field") == 1
    assert rec.changes.remove_lists == ()
    assert next(p for p in rec.problems if p.kind == "invalid_field").detail == (
        "Server 'srv' sent a list administrator of 400 characters (limit 320) for list 'kept'; "
        "billing leaves this list out until it is corrected on the hosting server. Everything "
        "else was stored.")


def test_screen_keeps_values_at_the_limits() -> None:
    inv = Inventory(
        ServerInfo("ListManager", "v" * 40, "h" * 255, None), LoggingState("m" * 40, "L" * 255),
        (SiteRecord("s" * 255, "t" * 100),),
        (good("n" * 255, site="s" * 255, admin="a" * 320, members=2**31 - 1,
              descr="é" * (TEXT_BYTES // 2)),),
        (), date(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert screen(inv) is inv
