"""The pure reconciliation core: every problem kind from a small table, and Hypothesis
properties (sync converges, counts match problems, fingerprints are stable and unique)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lm_billing_plugin.engine.inventory import Inventory, screen
from lm_billing_plugin.engine.reconcile import (
    ALL_KINDS,
    DRIFT_KINDS,
    AssignmentRow,
    BillingSnapshot,
    GroupCounts,
    GroupRow,
    ListRow,
    PlanLimits,
    SiteRow,
    apply_to_snapshot,
    fingerprint,
    owners,
    reconcile,
)
from lm_billing_plugin.models import PROBLEM_KINDS
from lm_billing_plugin.tclport.records import (
    LOGGING_LABELS,
    ListRecord,
    LoggingState,
    ServerInfo,
    SiteRecord,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def inv(lists: list[ListRecord] = (), sites: list[SiteRecord] = (),  # type: ignore[assignment]
        mode: str = "lists") -> Inventory:
    return Inventory(
        server_info=ServerInfo("ListManager", "12.3", "lists.example.com", None),
        logging=LoggingState(mode, LOGGING_LABELS.get(mode, mode)),
        sites=tuple(sites), lists=tuple(lists), usage=(), period=date(2026, 11, 1),
        fetched_at=NOW, usage_error=None if mode == "lists" else "off",
    )


def rec(name: str, site: str = "s1", members: int = 10, descr: str = "", admin: str = "",
        ) -> ListRecord:
    return ListRecord(name, site, descr, None, members, admin)


def row(id: int, name: str, site: str = "s1", members: int = 10, status: str = "active",
        descr: str = "", admin: str = "") -> ListRow:
    return ListRow(id, name, site, descr, members, admin, status)


S1 = SiteRecord("s1", "Site one")
S1_ROW = SiteRow(100, "s1", "Site one")


def plan(**limits: int) -> PlanLimits:
    return PlanLimits(7, "Small", **limits)


def group(gid: int = 1, *, active: bool = True, plan_: PlanLimits | None = None) -> GroupRow:
    return GroupRow(gid, f"G{gid}", 50 + gid, f"Customer {gid}", active, plan_)


def snap(lists: tuple[ListRow, ...] = (), sites: tuple[SiteRow, ...] = (S1_ROW,),
         assignments: tuple[AssignmentRow, ...] = (), groups: tuple[GroupRow, ...] = (),
         elsewhere: dict[int, GroupCounts] | None = None) -> BillingSnapshot:
    return BillingSnapshot(1, "Lists", sites, lists, assignments,
                           {g.id: g for g in groups}, elsewhere or {})


WHOLE = (AssignmentRow(1, 1, "server"),)

# (case id, snapshot, inventory, expected {(kind, object_name)})
CASES: list[tuple[str, BillingSnapshot, Inventory, set[tuple[str, str]]]] = [
    ("empty", snap(sites=()), inv(), set()),
    ("in sync and owned", snap((row(1, "a"),), assignments=WHOLE, groups=(group(),)),
     inv([rec("a")], [S1]), set()),
    ("unknown site and list", snap(sites=()), inv([rec("a")], [S1]),
     {("unknown_site", "s1"), ("unknown_list", "a")}),
    ("missing site and list", snap((row(1, "a"),), assignments=WHOLE, groups=(group(),)), inv(),
     {("missing_site", "s1"), ("missing_list", "a")}),
    ("changed members", snap((row(1, "a", members=5),), assignments=WHOLE, groups=(group(),)),
     inv([rec("a", members=6)], [S1]), {("changed_list", "a")}),
    ("changed site descr admin",
     snap((row(1, "a"),), assignments=WHOLE, groups=(group(),)),
     inv([rec("a", site="", descr="d", admin="x@example.com")], [S1]), {("changed_list", "a")}),
    ("removed list reappears", snap((row(1, "a", status="removed"),)),
     inv([rec("a")], [S1]), {("unknown_list", "a")}),
    ("removed list stays away", snap((row(1, "a", status="removed"),)), inv([], [S1]), set()),
    ("unassigned held list", snap((row(1, "a"),)), inv([rec("a")], [S1]),
     {("unassigned_list", "a")}),
    ("site assignment covers", snap((row(1, "a"),), assignments=(AssignmentRow(1, 1, "site",
                                                                               site_id=100),),
                                    groups=(group(),)),
     inv([rec("a")], [S1]), set()),
    ("list assignment covers", snap((row(1, "a"), row(2, "b")),
                                    assignments=(AssignmentRow(1, 1, "list", list_id=1),),
                                    groups=(group(),)),
     inv([rec("a"), rec("b")], [S1]), {("unassigned_list", "b")}),
    ("unlimited plan", snap(tuple(row(i, f"l{i}") for i in range(5)), assignments=WHOLE,
                            groups=(group(plan_=plan()),)),
     inv([rec(f"l{i}") for i in range(5)], [S1]), set()),
    ("over max lists", snap(tuple(row(i, f"l{i}") for i in range(3)), assignments=WHOLE,
                            groups=(group(plan_=plan(max_lists=2)),)),
     inv([rec(f"l{i}") for i in range(3)], [S1]), {("over_max_lists", "G1")}),
    ("over max lists with other servers",
     snap((row(1, "a"),), assignments=WHOLE, groups=(group(plan_=plan(max_lists=2)),),
          elsewhere={1: GroupCounts(lists=2, members=0, sites=1)}),
     inv([rec("a")], [S1]), {("over_max_lists", "G1")}),
    ("at max lists", snap(tuple(row(i, f"l{i}") for i in range(2)), assignments=WHOLE,
                          groups=(group(plan_=plan(max_lists=2)),)),
     inv([rec(f"l{i}") for i in range(2)], [S1]), set()),
    ("over max members", snap((row(1, "a", members=60), row(2, "b", members=50)),
                              assignments=WHOLE, groups=(group(plan_=plan(max_members=100)),)),
     inv([rec("a", members=60), rec("b", members=50)], [S1]), {("over_max_members", "G1")}),
    ("over max members per list", snap((row(1, "a", members=60), row(2, "b", members=50)),
                                       assignments=WHOLE,
                                       groups=(group(plan_=plan(max_members_per_list=55)),)),
     inv([rec("a", members=60), rec("b", members=50)], [S1]),
     {("over_max_members_per_list", "a")}),
    ("over max lists per site", snap((row(1, "a"), row(2, "b"), row(3, "c", site="s2")),
                                     sites=(S1_ROW, SiteRow(101, "s2")), assignments=WHOLE,
                                     groups=(group(plan_=plan(max_lists_per_site=1)),)),
     inv([rec("a"), rec("b"), rec("c", site="s2")], [S1, SiteRecord("s2", "")]),
     {("over_max_lists_per_site", "s1")}),
    ("over max sites", snap((row(1, "a"), row(2, "c", site="s2"), row(3, "d", site="")),
                            sites=(S1_ROW, SiteRow(101, "s2")), assignments=WHOLE,
                            groups=(group(plan_=plan(max_sites=1)),)),
     inv([rec("a"), rec("c", site="s2"), rec("d", site="")], [S1, SiteRecord("s2", "")]),
     {("over_max_sites", "G1")}),
    ("inactive customer", snap((row(1, "a"),), assignments=WHOLE,
                               groups=(group(active=False),)),
     inv([rec("a")], [S1]), {("inactive_customer_has_lists", "Customer 1")}),
    ("inactive customer without lists", snap((), assignments=WHOLE,
                                             groups=(group(active=False),)),
     inv([], [S1]), set()),
    ("logging off", snap(), inv([], [S1], mode="no"), {("logging_off", "Lists")}),
    ("other logging mode", snap(), inv([], [S1], mode="errors"), {("logging_off", "Lists")}),
    # Values billing's columns cannot hold: reported per object, never taken for missing.
    ("list name too long", snap(sites=(S1_ROW,)), screen(inv([rec("n" * 256)], [S1])),
     {("invalid_field", "n" * 120 + "… (256 characters)")}),
    ("held list sends a NUL", snap((row(1, "a"),), assignments=WHOLE, groups=(group(),)),
     screen(inv([rec("a", descr="x\x00y")], [S1])), {("invalid_field", "a")}),
    ("site name too long", snap(sites=()), screen(inv([], [SiteRecord("s" * 300, "")])),
     {("invalid_field", "s" * 120 + "… (300 characters)")}),
    ("members above 32 bits", snap(), screen(inv([rec("a", members=2**31)], [S1])),
     {("invalid_field", "a")}),
]


@pytest.mark.parametrize(("snapshot", "inventory", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_problem_table(snapshot: BillingSnapshot, inventory: Inventory,
                       expected: set[tuple[str, str]]) -> None:
    result = reconcile(snapshot, inventory)
    assert {(p.kind, p.object_name) for p in result.problems} == expected
    for p in result.problems:
        assert p.detail and p.kind in PROBLEM_KINDS
        json.dumps(dict(p.data))


def test_every_kind_is_covered_by_the_table() -> None:
    covered = {kind for case in CASES for kind, _ in case[3]}
    assert covered == set(ALL_KINDS) == set(PROBLEM_KINDS)


def test_changed_list_carries_old_and_new() -> None:
    result = reconcile(snap((row(1, "a", members=5, admin="o@x"),)),
                       inv([rec("a", members=6, admin="o@x")], [S1]))
    (changed,) = [p for p in result.problems if p.kind == "changed_list"]
    assert changed.data == {"old": {"members": 5}, "new": {"members": 6}}
    assert "5 → 6" in changed.detail
    assert result.changes.update_lists[0][0] == 1


def test_changed_list_calls_the_admin_list_admin() -> None:
    """"Owner" is the billing group everywhere: the list's admin is its "list admin"."""
    result = reconcile(snap((row(1, "a", admin="old@x"),)),
                       inv([rec("a", admin="new@x")], [S1]))
    (changed,) = [p for p in result.problems if p.kind == "changed_list"]
    assert "list admin: 'old@x' → 'new@x'" in changed.detail and "owner" not in changed.detail


def test_site_title_change_updates_without_a_problem() -> None:
    result = reconcile(snap(), inv([], [SiteRecord("s1", "New title")]))
    assert result.problems == []
    assert [s.title for _id, s in result.changes.update_sites] == ["New title"]
    assert result.changes.counts() == {"created": 0, "updated": 1, "removed": 0}


def test_reappearing_list_is_reactivated_not_created() -> None:
    result = reconcile(snap((row(9, "a", status="removed"),)), inv([rec("a")], [S1]))
    assert result.changes.create_lists == ()
    assert [i for i, _ in result.changes.reactivate_lists] == [9]
    assert result.changes.created == 1


def test_most_specific_owner_wins() -> None:
    assignments = (AssignmentRow(1, 3, "server"), AssignmentRow(2, 2, "site", site_id=100),
                   AssignmentRow(3, 1, "list", list_id=1), AssignmentRow(4, 4, "site",
                                                                         site_id=100))
    s = snap((row(1, "a"), row(2, "b"), row(3, "c", site="")), assignments=assignments)
    assert owners(s) == {1: 1, 2: 2, 3: 3}


def test_unknown_list_is_drift_and_becomes_unassigned_after_sync() -> None:
    s = snap(sites=())
    inventory = inv([rec("new")], [S1])
    first = reconcile(s, inventory)
    assert {p.kind for p in first.problems} == {"unknown_site", "unknown_list"}
    after = reconcile(apply_to_snapshot(s, first.changes), inventory)
    assert [(p.kind, p.object_name) for p in after.problems] == [("unassigned_list", "new")]
    assert after.changes.empty


def test_group_problems_belong_to_no_server_and_fingerprint_by_group() -> None:
    s = snap(tuple(row(i, f"l{i}") for i in range(3)), assignments=WHOLE,
             groups=(group(plan_=plan(max_lists=2)),))
    (p,) = reconcile(s, inv([rec(f"l{i}") for i in range(3)], [S1])).problems
    assert not p.server_scoped and p.group_id == 1
    other_server = replace(s, server_id=2, server_name="Other")
    (q,) = reconcile(other_server, inv([rec(f"l{i}") for i in range(3)], [S1])).problems
    assert q.fingerprint == p.fingerprint == fingerprint("over_max_lists", group_id=1)


def test_select_keeps_only_chosen_objects() -> None:
    result = reconcile(snap((row(1, "gone"), row(2, "same", members=1))),
                       inv([rec("new"), rec("same", members=2)], [S1]))
    chosen = result.changes.select({("list", "new"), ("list", "gone")})
    assert [r.name for r in chosen.create_lists] == ["new"]
    assert [n for _i, n in chosen.remove_lists] == ["gone"]
    assert chosen.update_lists == ()


# --- properties ------------------------------------------------------------------------------

NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12)
SITE_NAMES = st.sampled_from(["", "s1", "s2", "Zürich {x}"])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[BillingSnapshot, Inventory]:
    names = draw(st.lists(NAMES, unique=True, max_size=25))
    server_lists: list[ListRecord] = []
    billing_lists: list[ListRow] = []
    for i, name in enumerate(names):
        where = draw(st.sampled_from(["server", "billing", "both", "both", "removed"]))
        members = draw(st.integers(0, 100))
        site = draw(SITE_NAMES)
        if where in ("server", "both", "removed"):
            server_lists.append(rec(name, site=site, members=members))
        if where in ("billing", "both", "removed"):
            changed = draw(st.booleans())
            billing_lists.append(row(i + 1, name, site=site,
                                     members=members + (1 if changed else 0),
                                     status="removed" if where == "removed" else "active"))
    server_sites = [SiteRecord(n, "t") for n in draw(st.sets(st.sampled_from(["s1", "s2", "s3"])))]
    billing_sites = tuple(SiteRow(100 + i, n, "t", draw(st.sampled_from(["active", "removed"])))
                          for i, n in enumerate(sorted(draw(st.sets(st.sampled_from(
                              ["s1", "s2", "s4"]))))))
    assignments: list[AssignmentRow] = []
    for lrow in billing_lists:
        if draw(st.integers(0, 3)) == 0:
            assignments.append(AssignmentRow(len(assignments) + 1, draw(st.sampled_from([1, 2])),
                                             "list", list_id=lrow.id))
    if draw(st.booleans()):
        assignments.append(AssignmentRow(99, 2, "server"))
    limits = plan(max_lists=draw(st.integers(0, 5)), max_members=draw(st.integers(0, 300)),
                  max_members_per_list=draw(st.integers(0, 80)),
                  max_lists_per_site=draw(st.integers(0, 3)), max_sites=draw(st.integers(0, 2)))
    groups = (group(1, plan_=limits), group(2, active=draw(st.booleans())))
    snapshot = BillingSnapshot(1, "Lists", billing_sites, tuple(billing_lists),
                               tuple(assignments), {g.id: g for g in groups}, {})
    server_lists.sort(key=lambda r: r.name.encode("utf-8"))
    return snapshot, inv(server_lists, server_sites, mode=draw(st.sampled_from(["lists", "no"])))


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_sync_converges(world: tuple[BillingSnapshot, Inventory]) -> None:
    snapshot, inventory = world
    first = reconcile(snapshot, inventory)
    synced = apply_to_snapshot(snapshot, first.changes)
    second = reconcile(synced, inventory)
    assert second.drift == []
    assert second.changes.empty
    # So a sync judges billing after it without comparing the lists again: the same result.
    skipped = reconcile(synced, inventory, synced=True)
    assert (skipped.problems, skipped.changes, skipped.judged_groups) == (
        second.problems, second.changes, second.judged_groups)
    # Rules judge billing's rows: after the sync, every server list is held and active.
    held = {r.name for r in synced.lists if r.status == "active"}
    assert held == {r.name for r in inventory.lists}


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_counts_match_problems(world: tuple[BillingSnapshot, Inventory]) -> None:
    snapshot, inventory = world
    result = reconcile(snapshot, inventory)
    kinds = [p.kind for p in result.problems]
    changes = result.changes
    assert changes.created == kinds.count("unknown_site") + kinds.count("unknown_list")
    assert changes.removed == kinds.count("missing_site") + kinds.count("missing_list")
    assert len(changes.update_lists) == kinds.count("changed_list")
    active = {r.name for r in snapshot.lists if r.status == "active"}
    assert {p.object_name for p in result.problems if p.kind == "unassigned_list"} <= active
    assert set(kinds) <= set(PROBLEM_KINDS)
    for p in result.problems:
        json.dumps(dict(p.data))


@settings(max_examples=200, deadline=None)
@given(worlds(), st.randoms(use_true_random=False))
def test_fingerprints_unique_and_stable(world: tuple[BillingSnapshot, Inventory],
                                        rnd: random.Random) -> None:
    snapshot, inventory = world
    result = reconcile(snapshot, inventory)
    prints = [p.fingerprint for p in result.problems]
    assert len(prints) == len(set(prints))
    assert all(len(fp) == 64 and int(fp, 16) >= 0 for fp in prints)
    shuffled_lists = list(snapshot.lists)
    rnd.shuffle(shuffled_lists)
    shuffled_sites = list(inventory.sites)
    rnd.shuffle(shuffled_sites)
    again = reconcile(replace(snapshot, lists=tuple(shuffled_lists)),
                      replace(inventory, sites=tuple(shuffled_sites)))
    assert sorted(p.fingerprint for p in again.problems) == sorted(prints)
    # Drift never depends on assignments; rules never on the server's side.
    no_assign = reconcile(replace(snapshot, assignments=()), inventory)
    assert {p.fingerprint for p in no_assign.drift} == {p.fingerprint for p in result.drift}


def _as_key(problems: Any) -> set[tuple[str, str]]:
    return {(p.kind, p.object_name) for p in problems if p.kind not in DRIFT_KINDS}


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_rules_ignore_lists_billing_does_not_hold(world: tuple[BillingSnapshot, Inventory],
                                                  ) -> None:
    snapshot, inventory = world
    held = {r.name for r in snapshot.lists}
    extra = rec("\x00never-held-list", members=10_000)
    bigger = replace(inventory, lists=(*inventory.lists, extra))
    assert extra.name not in held
    assert _as_key(reconcile(snapshot, bigger).problems) == _as_key(
        reconcile(snapshot, inventory).problems)
