"""Pure reconciliation: (what billing holds for one server, what the server has) → problems and
the changes a sync would make. No Flask, no SQLAlchemy, no sockets: plain dataclasses in and out.

Rules users can rely on (documented in the README, tested in tests/test_reconcile.py):

* Drift compares the server with billing's *active* rows. A name on the server that billing
  does not hold (or holds as ``removed``) is ``unknown_*``; sync creates it (or reactivates the
  removed row, keeping its id, history and assignments). A billing row the server no longer
  has is ``missing_*``; sync marks it ``removed``, never deletes it. ``changed_list`` compares
  site, description, admin and member count, and carries ``{"old": ..., "new": ...}``.
* Billing rules judge billing's own rows, never the server's: a list billing does not hold
  yet cannot be assigned, so it is drift (``unknown_list``), not ``unassigned_list``. After a
  sync the new lists are billing's, and show as ``unassigned_list`` until an owner is assigned.
  Member counts are billing's stored ones (what the next bill uses); sync refreshes them.
* The owner of a list is the most specific active assignment: the list itself, else its site,
  else its whole server; at one level the lowest group id wins (deterministic).
* Plan limits of 0 mean unlimited; a group without a plan has no limits. Group-wide limits
  (lists, members, sites) count the group's lists on every server: this server's from the
  snapshot plus ``elsewhere`` (the group's counts on other servers, from billing). A group's
  sites are the distinct non-empty sites of the lists it owns.
* A value the server sent that billing's columns cannot hold (``inventory.rejected``, found by
  the inventory step) is an ``invalid_field`` problem of its object; that site or list is left
  out, and a billing row of the same name is not taken for missing (it is still on the server).
* Fingerprints: sha256 of kind + server id + object key for server, site and list problems;
  kind + group id for group-wide rules (their problem rows have no server).

One module on purpose: the pure rules of every problem kind and of a sync's changes, read
together with their table-driven tests.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Generic, TypeVar

from ..i18n import M_
from ..kinds import ALL_KINDS, DATA_KINDS, DRIFT_KINDS, GROUP_KINDS, RULE_KINDS, SERVER_KINDS
from ..tclport.records import LOGGING_LABELS, LOGGING_LISTS, ListRecord, LoggingState, SiteRecord

__all__ = [
    "ALL_KINDS",
    "DATA_KINDS",
    "DRIFT_KINDS",
    "GROUP_KINDS",
    "RULE_KINDS",
    "SERVER_KINDS",
    "AssignmentRow",
    "BillingSnapshot",
    "Changes",
    "Found",
    "GroupCounts",
    "GroupRow",
    "ListRow",
    "PlanLimits",
    "Reconciliation",
    "SiteRow",
    "apply_to_snapshot",
    "drift",
    "field_problems",
    "fingerprint",
    "owners",
    "reconcile",
    "rule_problems",
]

LISTS_LABEL: Final = LOGGING_LABELS[LOGGING_LISTS]
# The list fields drift compares (the "site, description, admin or member count").
_COMPARED: Final = ("site", "descr", "admin", "members")
_FIELD_WORDS: Final = {"descr": "description", "admin": "list admin"}


# --- billing's side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteRow:
    """A site as billing holds it (``status`` active or removed)."""

    id: int
    name: str
    title: str = ""
    status: str = "active"


@dataclass(frozen=True, slots=True)
class ListRow:
    """A mailing list as billing holds it (``status`` active or removed)."""

    id: int
    name: str
    site_name: str = ""
    descr: str = ""
    members: int = 0
    admin: str = ""
    status: str = "active"

    def fields(self) -> dict[str, Any]:
        return {"site": self.site_name, "descr": self.descr, "admin": self.admin,
                "members": self.members}


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """A hosting plan's limits; 0 = unlimited."""

    id: int
    name: str
    max_members: int = 0
    max_members_per_list: int = 0
    max_lists: int = 0
    max_lists_per_site: int = 0
    max_sites: int = 0


@dataclass(frozen=True, slots=True)
class GroupRow:
    """A billing group, its customer and its plan (None = no plan, no limits)."""

    id: int
    name: str
    customer_id: int
    customer_name: str
    customer_active: bool = True
    plan: PlanLimits | None = None


@dataclass(frozen=True, slots=True)
class AssignmentRow:
    """An assignment active today that covers this server, one of its sites or lists."""

    id: int
    group_id: int
    object_type: str  # server | site | list
    site_id: int | None = None
    list_id: int | None = None


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """A group's lists, members and sites (for group-wide limits)."""

    lists: int = 0
    members: int = 0
    sites: int = 0

    def __add__(self, other: GroupCounts) -> GroupCounts:
        return GroupCounts(self.lists + other.lists, self.members + other.members,
                           self.sites + other.sites)


@dataclass(frozen=True)
class BillingSnapshot:
    """What billing holds about one server, plus the groups whose rules it can judge.

    ``sites``/``lists`` include removed rows; ``assignments`` are those active today;
    ``groups`` are the groups involved on this server (and groups with open group-wide
    problems, so a group that left the server can still be judged); ``elsewhere`` is each of
    those groups' counts on other servers.
    """

    server_id: int
    server_name: str
    sites: tuple[SiteRow, ...] = ()
    lists: tuple[ListRow, ...] = ()
    assignments: tuple[AssignmentRow, ...] = ()
    groups: Mapping[int, GroupRow] = field(default_factory=dict)
    elsewhere: Mapping[int, GroupCounts] = field(default_factory=dict)


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """One problem found by a run. ``server_scoped`` False = a group-wide rule."""

    kind: str
    object_type: str  # server | site | list | group | customer
    object_name: str
    detail: str
    data: Mapping[str, Any]
    fingerprint: str
    group_id: int | None = None
    server_scoped: bool = True


@dataclass(frozen=True)
class Changes:
    """What a sync writes. Ids are billing's row ids; new rows carry the server's record."""

    create_sites: tuple[SiteRecord, ...] = ()
    reactivate_sites: tuple[tuple[int, SiteRecord], ...] = ()
    update_sites: tuple[tuple[int, SiteRecord], ...] = ()
    remove_sites: tuple[tuple[int, str], ...] = ()
    create_lists: tuple[ListRecord, ...] = ()
    reactivate_lists: tuple[tuple[int, ListRecord], ...] = ()
    update_lists: tuple[tuple[int, ListRecord], ...] = ()
    remove_lists: tuple[tuple[int, str], ...] = ()

    @property
    def created(self) -> int:
        return (len(self.create_sites) + len(self.reactivate_sites) + len(self.create_lists)
                + len(self.reactivate_lists))

    @property
    def updated(self) -> int:
        return len(self.update_sites) + len(self.update_lists)

    @property
    def removed(self) -> int:
        return len(self.remove_sites) + len(self.remove_lists)

    @property
    def empty(self) -> bool:
        return not (self.created or self.updated or self.removed)

    def counts(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "removed": self.removed}

    def select(self, keys: Collection[tuple[str, str]]) -> Changes:
        """Only the changes for the given ``(object_type, name)`` keys (fix selected objects)."""
        want = set(keys)

        def site(name: str) -> bool:
            return ("site", name) in want

        def lst(name: str) -> bool:
            return ("list", name) in want

        return Changes(
            create_sites=tuple(s for s in self.create_sites if site(s.name)),
            reactivate_sites=tuple(x for x in self.reactivate_sites if site(x[1].name)),
            update_sites=tuple(x for x in self.update_sites if site(x[1].name)),
            remove_sites=tuple(x for x in self.remove_sites if site(x[1])),
            create_lists=tuple(r for r in self.create_lists if lst(r.name)),
            reactivate_lists=tuple(x for x in self.reactivate_lists if lst(x[1].name)),
            update_lists=tuple(x for x in self.update_lists if lst(x[1].name)),
            remove_lists=tuple(x for x in self.remove_lists if lst(x[1])),
        )


@dataclass(frozen=True)
class Reconciliation:
    """Problems found (drift, billing rules, server) and the changes sync would apply.

    ``judged_groups`` are the groups whose group-wide rules this run evaluated: their open
    problems that were not found again are resolved.
    """

    problems: list[Found]
    changes: Changes
    judged_groups: frozenset[int] = frozenset()

    @property
    def drift(self) -> list[Found]:
        return [p for p in self.problems if p.kind in DRIFT_KINDS]


# --- helpers -------------------------------------------------------------------------------


def fingerprint(kind: str, *, server_id: int | None = None, group_id: int | None = None,
                key: Iterable[str] = ()) -> str:
    """Stable identity of a problem: sha256 hex of kind, server/group id and object key."""
    parts = [kind, "" if server_id is None else str(server_id),
             "" if group_id is None else str(group_id), *key]
    # \x1f cannot be confused with text inside names (a name holding it still differs in
    # the number of parts, which is fixed per kind).
    raw = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()


_ESCAPED = re.compile(r"[\n\r\t]").search


def _q(name: str) -> str:
    # Names are shown quoted with repr-like escaping only for control characters, so a
    # name with spaces or quotes reads unambiguously in a detail line. (Called once per
    # list per run: most names need no escaping, so test before replacing.)
    if _ESCAPED(name) is None:
        return f"'{name}'"
    shown = name.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f"'{shown}'"


def _record_fields(rec: ListRecord) -> dict[str, Any]:
    return {"site": rec.site, "descr": rec.descr, "admin": rec.admin, "members": rec.members}


# --- drift ---------------------------------------------------------------------------------


_Rec = TypeVar("_Rec", SiteRecord, ListRecord)
_Row = TypeVar("_Row", SiteRow, ListRow)


@dataclass
class _Pairing(Generic[_Rec, _Row]):
    """The server's records (first of each name) matched by name with billing's rows."""

    pairs: list[tuple[_Rec, _Row | None]]  # in the server's order
    create: list[_Rec]
    reactivate: list[tuple[int, _Rec]]
    remove: list[tuple[int, str]]  # active billing rows the server no longer has


def _pair(records: Iterable[_Rec], rows: Iterable[_Row],
          still_there: Collection[str] = ()) -> _Pairing[_Rec, _Row]:
    rows = list(rows)
    billing = {row.name: row for row in rows}
    out: _Pairing[_Rec, _Row] = _Pairing([], [], [], [])
    seen: set[str] = set()
    for rec in records:
        if rec.name in seen:
            continue
        seen.add(rec.name)
        row = billing.get(rec.name)
        out.pairs.append((rec, row))
        if row is None:
            out.create.append(rec)
        elif row.status != "active":
            out.reactivate.append((row.id, rec))
    out.remove = [(row.id, row.name) for row in rows
                  if row.status == "active" and row.name not in seen
                  and row.name not in still_there]
    return out


def drift(snapshot: BillingSnapshot, sites: Iterable[SiteRecord],
          lists: Iterable[ListRecord], *, rejected: Iterable[Any] = ()
          ) -> tuple[list[Found], Changes]:
    """Compare the server's sites and lists with billing's rows: drift problems and changes.

    ``rejected`` (the inventory's ``Rejected`` values) names sites and lists the server has but
    sent unstorable values for: billing's rows of those names are not taken for missing.
    """
    sid = snapshot.server_id
    server = snapshot.server_name
    problems: list[Found] = []
    held = list(rejected)
    site_pairs = _pair(sites, snapshot.sites,
                       {r.name for r in held if r.object_type == "site"})
    update_sites: list[tuple[int, SiteRecord]] = []
    for rec, row in site_pairs.pairs:
        if row is None or row.status != "active":
            problems.append(Found(
                "unknown_site", "site", rec.name,
                M_("Site %(site)s is on server %(server)s but not in billing; sync (or fix) "
                   "adds it.") % {"site": _q(rec.name), "server": _q(server)},
                {"title": rec.title, "reactivate": row is not None},
                fingerprint("unknown_site", server_id=sid, key=("site", rec.name)),
            ))
        elif row.title != rec.title:
            # A new site title is not a problem users act on; sync just keeps it current.
            update_sites.append((row.id, rec))
    for _id, name in site_pairs.remove:
        problems.append(Found(
            "missing_site", "site", name,
            M_("Site %(site)s is in billing but no longer on server %(server)s; sync (or "
               "fix) marks it removed and keeps its history.")
            % {"site": _q(name), "server": _q(server)},
            {}, fingerprint("missing_site", server_id=sid, key=("site", name)),
        ))

    list_pairs = _pair(lists, snapshot.lists, {r.name for r in held if r.object_type == "list"})
    update_lists: list[tuple[int, ListRecord]] = []
    for item, lrow in list_pairs.pairs:
        if lrow is None or lrow.status != "active":
            problems.append(Found(
                "unknown_list", "list", item.name,
                M_("List %(list)s is on server %(server)s but not in billing; sync (or "
                   "fix) adds it, then assign it an owner.")
                % {"list": _q(item.name), "server": _q(server)},
                {"new": _record_fields(item), "reactivate": lrow is not None},
                fingerprint("unknown_list", server_id=sid, key=("list", item.name)),
            ))
            continue
        old = lrow.fields()
        new = _record_fields(item)
        differs = [k for k in _COMPARED if old[k] != new[k]]
        if differs:
            update_lists.append((lrow.id, item))
            # "Owner" is the billing group everywhere; the list's admin is its "list admin".
            shown = "; ".join(f"{_FIELD_WORDS.get(k, k)}: {old[k]!r} → {new[k]!r}"
                              for k in differs)
            problems.append(Found(
                "changed_list", "list", item.name,
                M_("List %(list)s changed on server %(server)s: %(changes)s.")
                % {"list": _q(item.name), "server": _q(server), "changes": shown},
                {"old": {k: old[k] for k in differs}, "new": {k: new[k] for k in differs}},
                fingerprint("changed_list", server_id=sid, key=("list", item.name)),
            ))
    for _id, name in list_pairs.remove:
        problems.append(Found(
            "missing_list", "list", name,
            M_("List %(list)s is in billing but no longer on server %(server)s; sync (or "
               "fix) marks it removed and keeps its history and assignments.")
            % {"list": _q(name), "server": _q(server)},
            {}, fingerprint("missing_list", server_id=sid, key=("list", name)),
        ))
    changes = Changes(
        create_sites=tuple(site_pairs.create),
        reactivate_sites=tuple(site_pairs.reactivate),
        update_sites=tuple(update_sites),
        remove_sites=tuple(site_pairs.remove),
        create_lists=tuple(list_pairs.create),
        reactivate_lists=tuple(list_pairs.reactivate),
        update_lists=tuple(update_lists),
        remove_lists=tuple(list_pairs.remove),
    )
    return problems, changes


# --- billing rules -------------------------------------------------------------------------


def owners(snapshot: BillingSnapshot) -> dict[int, int]:
    """Owning group id of each active list of the snapshot (unowned lists are absent)."""
    by_list: dict[int, int] = {}
    by_site: dict[int, int] = {}
    whole: int | None = None
    for a in snapshot.assignments:
        if a.object_type == "list" and a.list_id is not None:
            by_list[a.list_id] = min(by_list.get(a.list_id, a.group_id), a.group_id)
        elif a.object_type == "site" and a.site_id is not None:
            by_site[a.site_id] = min(by_site.get(a.site_id, a.group_id), a.group_id)
        elif a.object_type == "server":
            whole = a.group_id if whole is None else min(whole, a.group_id)
    site_ids = {s.name: s.id for s in snapshot.sites}
    out: dict[int, int] = {}
    for row in snapshot.lists:
        if row.status != "active":
            continue
        owner = by_list.get(row.id)
        if owner is None:
            site_id = site_ids.get(row.site_name) if row.site_name else None
            owner = by_site.get(site_id) if site_id is not None else None
        if owner is None:
            owner = whole
        if owner is not None:
            out[row.id] = owner
    return out


def _limit_text(group: GroupRow) -> str:
    plan = group.plan
    assert plan is not None
    return M_("billing group %(group)s of customer %(customer)s (hosting plan %(plan)s)") % {
        "group": _q(group.name), "customer": _q(group.customer_name), "plan": _q(plan.name)}


def rule_problems(snapshot: BillingSnapshot) -> list[Found]:
    """Billing-rule problems of billing's own rows (see the module docstring)."""
    sid = snapshot.server_id
    server = snapshot.server_name
    owner_of = owners(snapshot)
    problems: list[Found] = []
    active = [row for row in snapshot.lists if row.status == "active"]
    for row in active:
        if row.id not in owner_of:
            problems.append(Found(
                "unassigned_list", "list", row.name,
                M_("List %(list)s on server %(server)s has no owner: assign it (or its "
                   "site or server) to a billing group.")
                % {"list": _q(row.name), "server": _q(server)},
                {"site": row.site_name},
                fingerprint("unassigned_list", server_id=sid, key=("list", row.name)),
            ))
    owned: dict[int, list[ListRow]] = defaultdict(list)
    for row in active:
        group_id = owner_of.get(row.id)
        if group_id is not None:
            owned[group_id].append(row)
    for group_id in sorted(snapshot.groups):
        group = snapshot.groups[group_id]
        mine = owned.get(group_id, [])
        local = GroupCounts(
            lists=len(mine),
            members=sum(r.members for r in mine),
            sites=len({r.site_name for r in mine if r.site_name}),
        )
        total = local + snapshot.elsewhere.get(group_id, GroupCounts())
        if not group.customer_active and total.lists:
            problems.append(Found(
                "inactive_customer_has_lists", "customer", group.customer_name,
                M_("Customer %(customer)s is inactive but its billing group %(group)s still "
                   "has %(count)s list(s): unassign them or make the customer active again.")
                % {"customer": _q(group.customer_name), "group": _q(group.name),
                   "count": total.lists},
                {"group_id": group_id, "group": group.name, "lists": total.lists},
                fingerprint("inactive_customer_has_lists", group_id=group_id),
                group_id=group_id, server_scoped=False,
            ))
        plan = group.plan
        if plan is None:
            continue
        for kind, count, limit, what in (
            ("over_max_lists", total.lists, plan.max_lists,
             M_("The %(limits)s has %(count)s lists; the plan permits %(limit)s. Change the "
                "group's hosting plan or move some of its lists.")),
            ("over_max_members", total.members, plan.max_members,
             M_("The %(limits)s has %(count)s members; the plan permits %(limit)s. Change the "
                "group's hosting plan or move some of its lists.")),
            ("over_max_sites", total.sites, plan.max_sites,
             M_("The %(limits)s has %(count)s sites; the plan permits %(limit)s. Change the "
                "group's hosting plan or move some of its lists.")),
        ):
            if limit and count > limit:
                problems.append(Found(
                    kind, "group", group.name,
                    what % {"limits": _limit_text(group), "count": count, "limit": limit},
                    {"group_id": group_id, "count": count, "limit": limit, "plan": plan.name},
                    fingerprint(kind, group_id=group_id),
                    group_id=group_id, server_scoped=False,
                ))
        if plan.max_members_per_list:
            for row in mine:
                if row.members > plan.max_members_per_list:
                    problems.append(Found(
                        "over_max_members_per_list", "list", row.name,
                        M_("List %(list)s on server %(server)s has %(count)s members; the "
                           "%(limits)s permits %(limit)s per list. Change the plan or the list.")
                        % {"list": _q(row.name), "server": _q(server), "count": row.members,
                           "limits": _limit_text(group), "limit": plan.max_members_per_list},
                        {"group_id": group_id, "count": row.members,
                         "limit": plan.max_members_per_list, "plan": plan.name},
                        fingerprint("over_max_members_per_list", server_id=sid,
                                    key=("list", row.name)),
                        group_id=group_id,
                    ))
        if plan.max_lists_per_site:
            per_site = Counter(r.site_name for r in mine if r.site_name)
            for site_name in sorted(per_site):
                count = per_site[site_name]
                if count > plan.max_lists_per_site:
                    problems.append(Found(
                        "over_max_lists_per_site", "site", site_name,
                        M_("Site %(site)s on server %(server)s has %(count)s lists of the "
                           "%(limits)s, which permits %(limit)s per site. Change the plan or "
                           "move lists.")
                        % {"site": _q(site_name), "server": _q(server), "count": count,
                           "limits": _limit_text(group), "limit": plan.max_lists_per_site},
                        {"group_id": group_id, "count": count,
                         "limit": plan.max_lists_per_site, "plan": plan.name},
                        fingerprint("over_max_lists_per_site", server_id=sid, group_id=group_id,
                                    key=("site", site_name)),
                        group_id=group_id,
                    ))
    return problems


def logging_problem(snapshot: BillingSnapshot, state: LoggingState,
                    usage_error: str | None = None) -> Found | None:
    """``logging_off`` when Enable Logging is not "Yes, Log All Messages ...", else None."""
    if state.counts_messages:
        return None
    return Found(
        "logging_off", "server", snapshot.server_name,
        M_("Enable Logging on server %(server)s is %(label)s; it must be %(wanted)s (Server "
           "Settings: Automatic Maintenance: Logging), else billing cannot count this "
           "server's mail.")
        % {"server": _q(snapshot.server_name), "label": repr(state.label),
           "wanted": repr(LISTS_LABEL)},
        {"mode": state.mode, "label": state.label, "usage_error": usage_error},
        fingerprint("logging_off", server_id=snapshot.server_id, key=("server",)),
    )


def _shown(name: str, limit: int = 120) -> str:
    # The name of an object billing cannot store: every control character escaped (a NUL
    # cannot be stored even in a problem row) and cut, so the problem row itself always fits.
    shown = "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}"
                    if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in name)
    return shown if len(shown) <= limit else shown[:limit] + f"… ({len(name):,} characters)"


# The invalid_field sentences, whole, one per field (a page says them in the viewer's
# language with the values kept: a field's words inside a sentence of pieces could not be
# told from the problem that follows them). Keys are (object type, field); the name fields
# have their own; a field not listed falls back to the last two.
_FIELD_SENTENCES: Final = {
    ("server", "version"): M_(
        "Server %(server)s sent a version %(problem)s; billing keeps this server's version "
        "empty until it is corrected on the hosting server. Everything else was stored."),
    ("server", "hostname"): M_(
        "Server %(server)s sent a host name %(problem)s; billing keeps this server's host "
        "name empty until it is corrected on the hosting server. Everything else was stored."),
    ("server", "mode"): M_(
        "Server %(server)s sent an Enable Logging mode %(problem)s; billing keeps this "
        "server's Enable Logging mode empty until it is corrected on the hosting server. "
        "Everything else was stored."),
    ("server", "label"): M_(
        "Server %(server)s sent an Enable Logging label %(problem)s; billing keeps this "
        "server's Enable Logging label empty until it is corrected on the hosting server. "
        "Everything else was stored."),
    ("site", "title"): M_(
        "Server %(server)s sent a site title %(problem)s for site '%(name)s'; billing leaves "
        "this site out until it is corrected on the hosting server. Everything else was "
        "stored."),
    ("list", "site"): M_(
        "Server %(server)s sent a site name %(problem)s for list '%(name)s'; billing leaves "
        "this list out until it is corrected on the hosting server. Everything else was "
        "stored."),
    ("list", "admin"): M_(
        "Server %(server)s sent a list administrator %(problem)s for list '%(name)s'; "
        "billing leaves this list out until it is corrected on the hosting server. "
        "Everything else was stored."),
    ("list", "descr"): M_(
        "Server %(server)s sent a list description %(problem)s for list '%(name)s'; billing "
        "leaves this list out until it is corrected on the hosting server. Everything else "
        "was stored."),
    ("list", "members"): M_(
        "Server %(server)s sent a member count %(problem)s for list '%(name)s'; billing "
        "leaves this list out until it is corrected on the hosting server. Everything else "
        "was stored."),
    ("site", "name"): M_(
        "Server %(server)s sent a site name '%(name)s' %(problem)s; billing leaves this site "
        "out until it is corrected on the hosting server. Everything else was stored."),
    ("list", "name"): M_(
        "Server %(server)s sent a list name '%(name)s' %(problem)s; billing leaves this list "
        "out until it is corrected on the hosting server. Everything else was stored."),
}
_SERVER_FIELD: Final = (
    "Server %(server)s sent a %(what)s %(problem)s; billing keeps this server's %(what)s "
    "empty until it is corrected on the hosting server. Everything else was stored.")
_OBJECT_FIELD: Final = (
    "Server %(server)s sent a %(what)s %(problem)s for %(object)s '%(name)s'; billing leaves "
    "this %(object)s out until it is corrected on the hosting server. Everything else was "
    "stored.")


def field_problems(snapshot: BillingSnapshot, rejected: Iterable[Any]) -> list[Found]:
    """One ``invalid_field`` problem per value billing cannot store (``Rejected`` records)."""
    sid = snapshot.server_id
    server = snapshot.server_name
    out: list[Found] = []
    for r in rejected:
        name = server if r.object_type == "server" else _shown(r.name)
        sentence = _FIELD_SENTENCES.get((r.object_type, r.field)) or (
            _SERVER_FIELD if r.object_type == "server" else _OBJECT_FIELD)
        out.append(Found(
            "invalid_field", r.object_type, name,
            sentence % {"server": _q(server), "what": r.what, "problem": r.problem,
                        "name": name, "object": r.object_type},
            {"field": r.field, **r.data},
            fingerprint("invalid_field", server_id=sid, key=(r.object_type, r.name, r.field)),
        ))
    return out


def reconcile(snapshot: BillingSnapshot, inventory: Any, *, rules: bool = True,
              synced: bool = False) -> Reconciliation:
    """Everything one run finds for one server.

    ``inventory`` is an :class:`lm_billing_plugin.engine.inventory.Inventory` (typed loosely so this
    module stays free of the network layer's imports): ``sites``, ``lists``, ``logging``,
    ``usage_error``, ``rejected``. ``rules=False`` leaves out the billing-rule problems (they
    depend on the snapshot only: a caller that knows them already) and judges no group.
    ``synced=True``: ``snapshot`` is :func:`apply_to_snapshot` of this inventory's changes
    (billing as a sync of it leaves it), which has no drift by construction (every drift
    problem is one of the changes applied; ``tests/test_reconcile.py`` checks it), so the
    comparison of every site and list is skipped.
    """
    rejected = getattr(inventory, "rejected", ())
    problems: list[Found]
    if synced:
        problems, changes = [], Changes()
    else:
        problems, changes = drift(snapshot, inventory.sites, inventory.lists,
                                  rejected=rejected)
    if not rules:
        problems.extend(field_problems(snapshot, rejected))
        off = logging_problem(snapshot, inventory.logging,
                              getattr(inventory, "usage_error", None))
        if off is not None:
            problems.append(off)
        return Reconciliation(problems, changes)
    problems.extend(rule_problems(snapshot))
    problems.extend(field_problems(snapshot, rejected))
    off = logging_problem(snapshot, inventory.logging, getattr(inventory, "usage_error", None))
    if off is not None:
        problems.append(off)
    return Reconciliation(problems, changes, frozenset(snapshot.groups))


def apply_to_snapshot(snapshot: BillingSnapshot, changes: Changes) -> BillingSnapshot:
    """The snapshot as it would be after ``changes`` (new rows get negative ids).

    Used by dry-run sync to report the problems billing would have afterwards, and by the
    property tests (a second reconcile after applying finds no drift).
    """
    next_id = -1
    sites = {s.id: s for s in snapshot.sites}
    for sid, rec in changes.reactivate_sites + changes.update_sites:
        sites[sid] = replace(sites[sid], title=rec.title, status="active")
    for sid, _name in changes.remove_sites:
        sites[sid] = replace(sites[sid], status="removed")
    for rec in changes.create_sites:
        sites[next_id] = SiteRow(next_id, rec.name, rec.title)
        next_id -= 1
    lists = {r.id: r for r in snapshot.lists}
    for lid, lrec in changes.reactivate_lists + changes.update_lists:
        lists[lid] = replace(lists[lid], site_name=lrec.site, descr=lrec.descr,
                             admin=lrec.admin, members=lrec.members, status="active")
    for lid, _name in changes.remove_lists:
        lists[lid] = replace(lists[lid], status="removed")
    for lrec in changes.create_lists:
        lists[next_id] = ListRow(next_id, lrec.name, lrec.site, lrec.descr, lrec.members,
                                 lrec.admin)
        next_id -= 1
    return replace(snapshot, sites=tuple(sites.values()), lists=tuple(lists.values()))
