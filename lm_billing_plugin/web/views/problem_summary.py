"""The Errors page's summary: open problems counted by kind and by server (GROUP BY), what
each kind means said once, the CSV export of a filter, and the gate's refusal in page words."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from ...i18n import N_, Words, gettext, say
from ...models import PROBLEM_KINDS, Problem, Server
from ..csvout import csv_stream, text_cell

# The Errors page's name of each kind (the gate's refusals use it too).
KIND_WORDS = Words({
    "unknown_site": N_("site not in billing"),
    "unknown_list": N_("list not in billing"),
    "missing_site": N_("site gone from the server"),
    "missing_list": N_("list gone from the server"),
    "changed_list": N_("list changed on the server"),
    "unassigned_list": N_("list has no owner"),
    "over_max_lists": N_("more lists than the plan permits"),
    "over_max_members": N_("more members than the plan permits"),
    "over_max_members_per_list": N_("a list has more members than the plan permits"),
    "over_max_lists_per_site": N_("a site has more lists than the plan permits"),
    "over_max_sites": N_("more sites than the plan permits"),
    "inactive_customer_has_lists": N_("inactive customer still has lists"),
    "logging_off": N_("Enable Logging is off"),
    "invalid_field": N_("the server sent a value billing cannot store"),
})

# What a kind means, said once above its rows (the rows then say only what differs).
MEANING = Words({
    "unknown_site": N_("These sites are on the hosting server but not in billing."),
    "unknown_list": N_("These lists are on the hosting server but not in billing."),
    "missing_site": N_("These sites are in billing but no longer on the hosting server."),
    "missing_list": N_("These lists are in billing but no longer on the hosting server."),
    "changed_list": N_("These lists changed on the hosting server since billing last read them."),
    "unassigned_list": N_("These lists are in billing but belong to no billing group."),
    "over_max_lists": N_("These billing groups have more lists than their hosting plan permits."),
    "over_max_members": N_("These billing groups have more members than their hosting plan "
                           "permits."),
    "over_max_members_per_list": N_("These lists have more members than their hosting plan "
    "permits per list."),
    "over_max_lists_per_site": N_("These sites have more lists than their hosting plan permits "
    "per site."),
    "over_max_sites": N_("These billing groups have more sites than their hosting plan permits."),
    "inactive_customer_has_lists": N_("These customers are inactive but still have lists."),
    "logging_off": N_("These servers do not log the messages ListManager sends, so billing cannot "
    "count their mail."),
    "invalid_field": N_("These hosting servers sent values that do not fit billing's columns; "
    "billing stored the rest."),
})

# Kinds whose stored detail sentence only repeats the object, the server and the meaning:
# their rows leave it out.
DETAIL_REPEATS_MEANING = frozenset(
    {"unknown_site", "unknown_list", "missing_site", "missing_list", "unassigned_list"}
)


def kind_order() -> ColumnElement[int]:
    """Problems sort by kind in the order the model lists the kinds (drift first)."""
    return case({k: i for i, k in enumerate(PROBLEM_KINDS)}, value=Problem.kind, else_=99)


@dataclass
class Count:
    key: Any  # a kind code, or a server id (None: no server)
    label: str
    count: int


# The "By server" list shows the servers with the most problems; the others are counted (the
# Server filter below names every server). A list of 1,000 links reads as nothing and was most
# of the page's time.
SERVERS_SHOWN = 20


@dataclass
class Summary:
    total: int = 0
    by_kind: list[Count] = field(default_factory=list)
    by_server: list[Count] = field(default_factory=list)
    # Within the kind filter: the problems on every server, and the servers not in by_server.
    all_servers: int = 0
    more_servers: int = 0

    def kind_count(self, kind: str) -> int:
        return next((c.count for c in self.by_kind if c.key == kind), 0)


def summarise(
    session: Session,
    base: Sequence[ColumnElement[bool]],
    *,
    server_id: int | None,
    kind: str,
    kind_words: Mapping[str, str],
) -> Summary:
    """Counts of the open problems ``base`` selects: by kind within the server filter, by
    server within the kind filter (so each count is the size of the filter its link sets).
    Two GROUP BY queries, whatever the number of problems."""
    server_clause = [Problem.server_id == server_id] if server_id is not None else []
    kind_clause = [Problem.kind == kind] if kind else []
    order = kind_order()
    kinds = session.execute(
        select(Problem.kind, func.count().label("n"))
        .where(*base, *server_clause)
        .group_by(Problem.kind)
        .order_by(func.min(order))
    ).all()
    servers = session.execute(
        select(Problem.server_id, Server.name, func.count().label("n"))
        .outerjoin(Server, Server.id == Problem.server_id)
        .where(*base, *kind_clause)
        .group_by(Problem.server_id, Server.name)
        .order_by(func.count().desc(), Server.name)
    ).all()
    # The busiest servers, and the filtered one wherever it ranks.
    shown = [r for i, r in enumerate(servers)
             if i < SERVERS_SHOWN or (server_id is not None and r.server_id == server_id)]
    summary = Summary(
        by_kind=[Count(r.kind, kind_words.get(r.kind, r.kind), int(r.n)) for r in kinds],
        by_server=[Count(r.server_id, r.name or gettext("no server"), int(r.n)) for r in shown],
        all_servers=sum(int(r.n) for r in servers),
        more_servers=len(servers) - len(shown),
    )
    summary.total = summary.kind_count(kind) if kind else sum(c.count for c in summary.by_kind)
    return summary


# --- CSV -----------------------------------------------------------------------------------

CSV_HEADER = ("Server", "Problem", "Kind", "Object type", "Object", "Detail", "Found", "Last seen")


def csv_lines(rows: Iterable[Any], kind_words: Mapping[str, str]) -> Iterator[str]:
    """The header, then one CSV line per (Problem, server name) row, as they come."""
    return csv_stream(CSV_HEADER, (
        [
            text_cell(server_name or ""),
            text_cell(kind_words.get(problem.kind, problem.kind)),
            problem.kind,
            problem.object_type,
            text_cell(problem.object_name),
            text_cell(problem.detail),
            problem.first_seen_at.isoformat() if problem.first_seen_at else "",
            problem.last_seen_at.isoformat() if problem.last_seen_at else "",
        ]
        for problem, server_name in rows))


# --- the gate's refusal in page words ------------------------------------------------------

_CODE = re.compile(r"\b(" + "|".join(map(re.escape, PROBLEM_KINDS)) + r") (?=['\"])")


def in_page_words(message: str, kind_words: Mapping[str, str]) -> str:
    """A message that names problems by their codes (``unknown_list 'x'``), with the words
    the Errors page uses instead (``list not in billing: 'x'``)."""
    return _CODE.sub(lambda m: f"{kind_words.get(m.group(1), m.group(1))}: ", message)


def gate_words(exc: BaseException) -> str:
    """The gate's refusal (catalog.assignment.GateError) as the pages say it."""
    return in_page_words(say(str(exc)), KIND_WORDS)
