"""Spec 4b conformance (find_admin, find_member, delete_member): our client against raw-socket
servers that send literal bytes, and our simulator driven by literal request bytes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
from _sim import AUTH_OK, GREETING, PATIENT, frame
from tclsh_oracle import Tclsh, tclsh_path
from test_conformance import QUIT_OK, Wire, client, fails, ok, raw_server

from lm_billing_plugin.tclport import TclPortClient, TclPortError
from lm_billing_plugin.tclport.codec import decode_dict, decode_list
from lm_billing_plugin.tclport.records import ListRecord, SiteRecord
from lm_billing_plugin.testing.simulator import Dataset, HostSim, MemberEntry

EMPTY = ok(b"items {} truncated 0")

# Every word goes out as ONE request word, encoded per section 1; bytes written out by hand.
METACHARACTERS = [
    ("[exec rm -rf /]", b"{[exec rm -rf /]}"),
    ("{unbalanced", b"\\{unbalanced"),
    ("}{", b"\\}\\{"),
    ('a "b" c', b'{a "b" c}'),
    ("$HOME", b"{$HOME}"),
    ("back\\slash", b"{back\\slash}"),
    ("ends\\", b"ends\\\\"),
    ("line\nbreak", b"line\\nbreak"),
    ("cr\rlf", b"cr\\rlf"),
    ("smith|jones", b"smith|jones"),
    ("x;y", b"{x;y}"),
    ("#hash", b"{#hash}"),
    ("Zürich", "Zürich".encode()),
]


# -- client: what it sends ------------------------------------------------------------------------


def test_lookup_words_go_out_as_one_request_word_each() -> None:
    """4b + 1: PATTERN, EMAIL and LIST are each one word, metacharacters quoted, no raw LF."""
    words = [w for w, _ in METACHARACTERS]
    replies = [GREETING, AUTH_OK]
    replies += [EMPTY] * len(words)  # find_admin
    replies += [EMPTY] * len(words)  # find_member
    replies += [ok(b"deleted 0")] * len(words)  # delete_member LIST EMAIL
    replies.append(QUIT_OK)
    with raw_server(replies) as server:
        with client(server) as c:
            for w in words:
                assert c.find_admin(w).items == ()
            for w in words:
                assert c.find_member(w).items == ()
            for w in words:
                assert c.delete_member(w, w) is False
        server.thread.join(5)
    lines = server.lines[1:-1]  # without auth and quit
    expected = [b"find_admin " + raw for _, raw in METACHARACTERS]
    expected += [b"find_member " + raw for _, raw in METACHARACTERS]
    expected += [b"delete_member " + raw + b" " + raw for _, raw in METACHARACTERS]
    assert lines == expected
    assert all(b"\r" not in line for line in lines)
    path = tclsh_path()
    if path is None:
        pytest.skip("tclsh (Tcl 8.6) is not installed")
    oracle = Tclsh(path)
    try:
        read = oracle.split([line.decode("utf-8") for line in lines])
    finally:
        oracle.close()
    n = len(words)
    assert read[:n] == [["find_admin", w] for w in words]
    assert read[n : 2 * n] == [["find_member", w] for w in words]
    assert read[2 * n :] == [["delete_member", w, w] for w in words]


@pytest.mark.parametrize(
    "call", [("find_admin", ""), ("find_member", ""), ("delete_member", "", "a@b.c"),
             ("delete_member", "list", "")],
)
def test_empty_words_are_refused_before_sending(call: tuple[str, ...]) -> None:
    """4b: an empty PATTERN/EMAIL (or LIST) is refused client-side; nothing goes out."""
    with raw_server([GREETING, AUTH_OK, QUIT_OK]) as server:
        with client(server) as c:
            with pytest.raises(ValueError, match="must not be empty"):
                getattr(c, call[0])(*call[1:])
            assert c.connected
        server.thread.join(5)
    assert server.lines == [b"auth TCLPORTPasswd", b"quit"]


# -- client: what it accepts ----------------------------------------------------------------------


def test_find_admin_reply_is_read() -> None:
    body = (b"items {{list l1 site {} admin Boss@Example.com name {Ann Smith}} "
            b"{list {a b} site s1 admin x@y.org name {}}} truncated 1")
    with raw_server([GREETING, AUTH_OK, ok(body), QUIT_OK]) as server, client(server) as c:
        found = c.find_admin("smith")
    assert found.truncated is True
    assert [(m.list, m.site, m.admin, m.name) for m in found.items] == [
        ("l1", "", "Boss@Example.com", "Ann Smith"), ("a b", "s1", "x@y.org", "")]


def test_find_member_reply_is_read() -> None:
    body = (b"items {{list l1 site s email PAT@example.org type held joined 2024-02-29} "
            b"{list l2 site s email pat@example.org type needs-confirm joined {}}} truncated 0")
    with raw_server([GREETING, AUTH_OK, ok(body), QUIT_OK]) as server, client(server) as c:
        found = c.find_member("Pat@Example.org")
    assert found.truncated is False
    assert [(m.list, m.email, m.type, m.joined) for m in found.items] == [
        ("l1", "PAT@example.org", "held", date(2024, 2, 29)),
        ("l2", "pat@example.org", "needs-confirm", None)]


def _items(n: int, email: str = "a@b.c") -> bytes:
    item = f"{{list l{{}} site s email {email} type normal joined 2026-01-01}}"
    return " ".join(item.replace("l{}", f"l{i}") for i in range(n)).encode()


ITEM = b"{list l1 site s email a@b.c type normal joined 2026-01-01}"


@pytest.mark.parametrize(
    ("call", "body", "what"),
    [
        ("find_member", b"items {}", "truncated"),
        ("find_member", b"truncated 0", "items"),
        ("find_member", b"items {} truncated 2", "not 0 or 1"),
        ("find_member", b"items {} truncated {}", "not 0 or 1"),
        ("find_member", b"items {" + _items(5001) + b"} truncated 1", "5,001 items"),
        ("find_member", b"items {{list l1 site s email a@b.c type normal}} truncated 0",
         "joined"),
        ("find_member", b"items {{list l1 site s email a@b.c type normal joined 2026-13-01}} "
         b"truncated 0", "YYYY-MM-DD"),
        ("find_member", b"items {{list l1 site s email a@b.c type {} joined {}}} truncated 0",
         "type"),
        ("find_member", b"items {" + ITEM + b" " + ITEM + b"} truncated 0", "appears twice"),
        ("find_member", b"items {{list l1 site s email other@b.c type normal joined {}}} "
         b"truncated 0", "other@b.c"),
        ("find_member", b"items {{list l1 site s}} truncated 0", "email"),
        ("find_member", b"items {{unbalanced} truncated 0", "not a Tcl dict"),
        ("find_admin", b"items {{list l1 site s admin {} name N}} truncated 0", "admin"),
        ("find_admin", b"items {{list l1 site s admin a@b.c}} truncated 0", "name"),
        ("delete_member", b"deleted 2", "not 0 or 1"),
        ("delete_member", b"deleted", "not a Tcl dict"),
        ("delete_member", b"", "deleted"),
    ],
)
def test_lookup_replies_are_checked(call: str, body: bytes, what: str) -> None:
    """4b: shapes are strict (fields, dates, 0/1 flags, at most 5,000 items, one per list,
    only the address asked for); a bad reply is MALFORMED, names the server, says how large."""
    args = {"find_admin": ("a",), "find_member": ("a@b.c",), "delete_member": ("l1", "a@b.c")}
    with raw_server([GREETING, AUTH_OK, ok(body)]) as server:
        error = fails(server, call, *args[call])
    assert error.code == "MALFORMED"
    assert what in error.message and "cannot read" in error.message
    assert f"in a {call} reply of {len(body):,} bytes" in error.message


def test_5000_items_are_accepted() -> None:
    body = b"items {" + _items(5000) + b"} truncated 1"
    with raw_server([GREETING, AUTH_OK, ok(body), QUIT_OK]) as server, client(server) as c:
        found = c.find_member("a@b.c")
    assert len(found.items) == 5000 and found.truncated


@pytest.mark.parametrize(
    ("call", "args", "reply", "phrases"),
    [
        ("find_admin", ("x",), b"UNKNOWN_COMMAND {unknown command find_admin}",
         ["cannot be searched (it does not offer find_admin)", "on the hosting server itself"]),
        ("find_member", ("a@b.c",), b"UNKNOWN_COMMAND {unknown command find_member}",
         ["cannot be searched (it does not offer find_member)"]),
        ("delete_member", ("l", "a@b.c"), b"UNKNOWN_COMMAND x",
         ["cannot be asked to delete members (it does not offer delete_member)"]),
        ("delete_member", ("l", "a@b.c"), b"NOT_PERMITTED {no remote deletions}",
         ["does not allow remote deletions", "no remote deletions",
          "remove the member on the hosting server itself"]),
        ("find_admin", ("x",), b"BAD_ARGS {PATTERN must not be empty}", ["BAD_ARGS", "PATTERN"]),
    ],
)
def test_lookup_errors_say_what_to_do(call: str, args: tuple[str, ...], reply: bytes,
                                      phrases: list[str]) -> None:
    """4b + 6: a server without the look-ups cannot be searched; the session stays usable."""
    replies = [GREETING, AUTH_OK, frame("ERR", reply), ok(b"mode lists label x"), QUIT_OK]
    with raw_server(replies) as server, client(server) as c:
        with pytest.raises(TclPortError) as info:
            getattr(c, call)(*args)
        assert str(info.value).startswith(f"Lists (127.0.0.1:{server.address[1]}): ")
        for phrase in phrases:
            assert phrase in info.value.message
        assert c.logging().mode == "lists"  # an ERR reply ends nothing


# -- the simulator, driven by literal bytes --------------------------------------------------------


def small() -> Dataset:
    return Dataset(
        sites=[SiteRecord("s", "S")],
        lists=[
            ListRecord("l1", "s", "", None, 2, "Boss@Example.com"),
            ListRecord("l 2", "", "", None, 0, "ops@example.net"),
            ListRecord("l3", "s", "", None, 0, ""),
        ],
        admin_names={"l1": "Ann Smith", "l 2": "Jo {Ops}", "l3": "Smith Without Email"},
        members=[
            MemberEntry("l1", "pat@example.org", "normal", date(2025, 1, 2)),
            MemberEntry("l 2", "PAT@Example.ORG", "held", None),
            MemberEntry("l3", "sam@example.org", "unsub", date(2025, 1, 3)),
        ],
    )


@pytest.fixture
def sim() -> Iterator[HostSim]:
    with HostSim(small()) as server:
        yield server


L1 = b"{list l1 site s admin Boss@Example.com name {Ann Smith}}"
L2 = b"{list {l 2} site {} admin ops@example.net name {Jo {Ops}}}"


@pytest.mark.parametrize(
    ("line", "items"),
    [
        (b"find_admin smith", [L1]),  # by name, any case; l3 has no admin email
        (b"find_admin EXAMPLE.COM", [L1]),  # by email, any case
        (b"find_admin smith|OPS", [L2, L1]),  # any part; sorted by list name bytes
        (b"find_admin {smith|ops}", [L2, L1]),  # a braced word is the same word
        (b"find_admin \\{Ops\\}", [L2]),  # backslash escapes (braces in a name)
        (b"find_admin ann\\u0020smith", [L1]),  # \u escape in a bare word
        (b"find_admin nobody", []),
        (b"find_admin {[exec rm -rf /]}", []),  # text, never a command
        (b"find_admin smith||", [L1]),  # empty parts are ignored
    ],
)
def test_sim_find_admin_bytes(sim: HostSim, line: bytes, items: list[bytes]) -> None:
    with Wire(sim.address) as wire:
        wire.login()
        wire.send(line + b"\n")
        body = b"items {" + b" ".join(items) + b"} truncated 0" if items else \
            b"items {} truncated 0"
        wire.expect(frame("OK", body))


def test_sim_find_member_is_case_insensitive_and_keeps_stored_case(sim: HostSim) -> None:
    with Wire(sim.address) as wire:
        wire.login()
        wire.send(b"find_member Pat@EXAMPLE.org\n")
        wire.expect(frame(
            "OK",
            b"items {{list {l 2} site {} email PAT@Example.ORG type held joined 2000-01-01} "
            b"{list l1 site s email pat@example.org type normal joined 2025-01-02}} truncated 0"))


def test_sim_delete_member_removes_and_find_no_longer_finds(sim: HostSim) -> None:
    with Wire(sim.address) as wire:
        wire.login()
        wire.send(b"delete_member l1 PAT@example.org\n")
        wire.expect(b"OK 9\ndeleted 1\n")
        wire.send(b"delete_member l1 pat@example.org\n")
        wire.expect(b"OK 9\ndeleted 0\n")
        wire.send(b"delete_member {no such list} pat@example.org\n")
        wire.expect(b"OK 9\ndeleted 0\n")
        wire.send(b"find_member pat@example.org\n")
        status, body = wire.status_body()
        assert status == b"OK"
        items = decode_list(decode_dict(body.decode())["items"])
        assert [decode_dict(i)["list"] for i in items] == ["l 2"]
    # The list's count of normal members drops with it, as on a server.
    assert next(r for r in sim.dataset.lists if r.name == "l1").members == 1


@pytest.mark.parametrize(
    "line",
    [b"find_admin {}", b"find_admin", b"find_admin a b", b"find_admin |", b"find_admin ||",
     b"find_member {}", b"find_member", b"find_member a b", b"delete_member l1",
     b"delete_member {} a@b.c", b"delete_member l1 {}", b"delete_member l1 a@b.c x"],
)
def test_sim_bad_lookup_arguments(sim: HostSim, line: bytes) -> None:
    """4b: an empty PATTERN/EMAIL, or the wrong number of words, is BAD_ARGS."""
    with Wire(sim.address) as wire:
        wire.login()
        wire.send(line + b"\n")
        assert wire.code() == "BAD_ARGS"
        wire.send(b"find_member pat@example.org\n")  # the session goes on
        assert wire.status_body()[0] == b"OK"
    assert len(sim.members_of("pat@example.org")) == 2


def test_sim_lookups_need_auth(sim: HostSim) -> None:
    with Wire(sim.address) as wire:
        wire.expect(b"OK 30\nprotocol 1 product ListManager\n")
        wire.send(b"delete_member l1 pat@example.org\n")
        assert wire.code() == "AUTH_REQUIRED"
    assert len(sim.members_of("pat@example.org")) == 2


def test_sim_without_lookups_answers_unknown_command() -> None:
    with HostSim(small(), offer_lookups=False) as sim, Wire(sim.address) as wire:
        wire.login()
        for line in (b"find_admin smith\n", b"find_member pat@example.org\n",
                     b"delete_member l1 pat@example.org\n"):
            wire.send(line)
            assert wire.code() == "UNKNOWN_COMMAND"
        assert len(sim.members_of("pat@example.org")) == 2


def test_sim_that_forbids_deletions_keeps_the_member() -> None:
    with HostSim(small(), allow_delete_member=False) as sim, Wire(sim.address) as wire:
        wire.login()
        wire.send(b"delete_member l1 pat@example.org\n")
        assert wire.code() == "NOT_PERMITTED"
        wire.send(b"find_member pat@example.org\n")  # searching still works
        assert wire.status_body()[0] == b"OK"
    assert len(sim.members_of("pat@example.org")) == 2


def test_sim_cuts_at_5000_and_says_truncated() -> None:
    lists = [ListRecord(f"l{i:05d}", "", "", None, 0, f"a{i}@example.com") for i in range(5001)]
    data = Dataset(lists=lists, members=[MemberEntry(r.name, "m@x.org") for r in lists])
    with HostSim(data) as sim, TclPortClient(*sim.address, settings=PATIENT) as c, \
            Wire(sim.address) as wire:
        wire.login()
        for line in (b"find_admin example.com\n", b"find_member M@X.ORG\n"):
            wire.send(line)
            status, body = wire.status_body()
            found = decode_dict(body.decode())
            assert status == b"OK" and found["truncated"] == "1"
            items = [decode_dict(i) for i in decode_list(found["items"])]
            assert len(items) == 5000 and items[-1]["list"] == "l04999"
        # Exactly 5,000 is not truncated.
        sim.remove_list("l05000")
        assert c.find_admin("example.com").truncated is False
        assert len(c.find_member("m@x.org").items) == 5000


def test_generated_servers_share_members_across_servers() -> None:
    """Seeded data: a shared address is on several lists of servers with different seeds,
    stored in more than one letter case; generation stays deterministic."""
    one, two = Dataset.generate(lists=30, seed=1), Dataset.generate(lists=30, seed=2)
    assert one == Dataset.generate(lists=30, seed=1)
    for data in (one, two):
        stored = {m.email for m in data.members if m.email.lower() == "pat.jones@example.org"}
        assert len(stored) == 2  # as written, and in capitals
        assert sum(1 for m in data.members if m.email.lower() == "pat.jones@example.org") >= 3
    assert Dataset.from_dict(one.to_dict()) == one
