"""Billing: Errors ("Errors Were Found, Click Here to Fix") — every open problem, filtered by
server and kind, and "Fix Selected Objects" through the engine's fix_problems."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import ColumnElement, or_, select
from werkzeug.wrappers import Response

from ...engine.fixes import FIX_ALL_LIMIT
from ...i18n import N_, Words, gettext, say
from ...models import PROBLEM_KINDS, Batch, Problem, Run, Server
from ...state import get_state
from ..access import actor_name, requires
from ..forms.servers import FixForm
from ..l10n import format_number
from . import problem_summary
from .paging import MAX_ID, clamp, order_by, page_from_request
from .problem_summary import KIND_WORDS

if TYPE_CHECKING:
    from ...engine.fixes import FixItem

log = logging.getLogger("lm_billing_plugin.views.problems")


_PLAN_FIX = N_("Fixing cannot change a contract: change the group's hosting plan.")
# What "Fix Selected Objects" does with a problem of each kind.
FIX_WORDS = Words({
    "unknown_site": N_("Fixing adds the site to billing."),
    "unknown_list": N_("Fixing adds the list to billing (unassigned); then assign an owner."),
    "missing_site": N_("Fixing marks the site removed in billing; its history stays."),
    "missing_list": N_("Fixing marks the list removed in billing; its history and assignments "
                       "stay."),
    "changed_list": N_("Fixing updates billing with the server's values."),
    "unassigned_list": N_("Fixing cannot choose an owner: assign the list to a billing group."),
    "over_max_lists": N_("Fixing cannot change a contract: change the group's hosting plan "
    "or move lists to another group."),
    "over_max_members": _PLAN_FIX,
    "over_max_members_per_list": _PLAN_FIX,
    "over_max_lists_per_site": _PLAN_FIX,
    "over_max_sites": _PLAN_FIX,
    "inactive_customer_has_lists": N_("Fixing cannot decide this: reactivate the customer or "
    "unassign its lists."),
    "logging_off": N_("Fixing switches Enable Logging on through TclPort — only when you tick "
    '"also switch Enable Logging on through TclPort" below.'),
    "invalid_field": N_("Fixing cannot change what the hosting server sends: correct the value "
    "there (shorten it, remove the NUL character), then validate the server again."),
})

DRIFT_KINDS = ("unknown_site", "unknown_list", "missing_site", "missing_list", "changed_list")
PLAN_KINDS = (
    "over_max_lists",
    "over_max_members",
    "over_max_members_per_list",
    "over_max_lists_per_site",
    "over_max_sites",
)
# Endpoints of the catalog pages, by the names they may carry; the first registered wins.
GROUP_EDIT_ENDPOINTS = ("lm_billing.group_edit", "lm_billing.billing_group_edit")
CUSTOMER_EDIT_ENDPOINTS = ("lm_billing.customer_edit",)


def _endpoint(candidates: tuple[str, ...]) -> str | None:
    return next((e for e in candidates if e in current_app.view_functions), None)


def solve_link(problem: Problem) -> tuple[str, str] | None:
    """(label, url) of the page that solves a billing-rule problem, when there is one."""
    if problem.kind == "unassigned_list" and problem.server_id is not None:
        url = url_for(
            "lm_billing.server_detail", server_id=problem.server_id, q=problem.object_name
        )
        return (gettext("Assign an owner"), url + "#lists")
    data = problem.data or {}
    group_id = problem.group_id if problem.group_id is not None else data.get("group_id")
    if problem.kind in PLAN_KINDS and group_id is not None:
        endpoint = _endpoint(GROUP_EDIT_ENDPOINTS)
        if endpoint:
            return (gettext("Change the plan"), url_for(endpoint, group_id=group_id))
    if problem.kind == "inactive_customer_has_lists":
        customer_id = data.get("customer_id")
        endpoint = _endpoint(CUSTOMER_EDIT_ENDPOINTS)
        if endpoint and customer_id:
            return (gettext("Edit the customer"), url_for(endpoint, customer_id=customer_id))
        endpoint = _endpoint(GROUP_EDIT_ENDPOINTS)
        if endpoint and group_id is not None:
            return (gettext("Open the billing group"), url_for(endpoint, group_id=group_id))
    return None


def found_by_batch(batch_id: int) -> ColumnElement[bool]:
    """Problems one batch's runs found: first found by them, or seen by them last. Both,
    because a later fix or check run moves last_run_id off the batch that found them."""
    runs = select(Run.id).where(Run.batch_id == batch_id).scalar_subquery()
    return or_(Problem.first_run_id.in_(runs), Problem.last_run_id.in_(runs))


def _id_arg(name: str) -> int | None:
    """A row id from the query string; None for nonsense (bookmarks, hand-edited URLs)."""
    try:
        value = int(request.args.get(name, ""))
    except ValueError:
        return None
    return value if 0 < value <= MAX_ID else None


def _filter() -> tuple[int | None, str, Batch | None, list[ColumnElement[bool]]]:
    """The Errors page's filter from the query string (server, kind, batch): its values,
    and the WHERE clauses for open problems that match it."""
    kind = request.args.get("kind", "")
    if kind not in PROBLEM_KINDS:
        kind = ""
    server_id = _id_arg("server")
    batch_id = _id_arg("batch")
    batch = get_state().session.get(Batch, batch_id) if batch_id is not None else None
    where: list[ColumnElement[bool]] = [Problem.status == "open"]
    if server_id is not None:
        where.append(Problem.server_id == server_id)
    if kind:
        where.append(Problem.kind == kind)
    if batch is not None:
        where.append(found_by_batch(batch.id))
    return server_id, kind, batch, where


def problems() -> str:

    state = get_state()
    session = state.session
    server_id, kind, batch, where = _filter()
    batch_id = batch.id if batch is not None else None

    sort_keys: dict[str, Any] = {
        "server": Server.name,
        "kind": Problem.kind,
        "object": Problem.object_name,
        "seen": Problem.first_seen_at,
    }
    page = page_from_request(
        "lm_billing.problems",
        sort_keys,
        default_sort="server",
        size=state.settings.page_size,
        keep={"server": server_id, "kind": kind, "batch": batch_id},
    )
    servers = session.execute(select(Server.id, Server.name).order_by(Server.name)).all()
    base = [Problem.status == "open"] + ([found_by_batch(batch.id)] if batch else [])
    summary = problem_summary.summarise(
        session, base, server_id=server_id, kind=kind, kind_words=KIND_WORDS
    )
    # The summary's total is this filter's count (same status, server, kind and batch).
    page.total = summary.total
    clamp(page)
    # The page's ids from narrow rows (sorting only the keys, not every problem's detail and
    # data), then only those rows whole: at 6,000 open problems this is a third of the time
    # one wide sorted statement with a window count took.
    ids = list(session.scalars(
        select(Problem.id)
        .outerjoin(Server, Server.id == Problem.server_id)
        .where(*where)
        # Grouped by kind on the page: kind first, then the chosen order.
        .order_by(problem_summary.kind_order(), *order_by(page, sort_keys, Problem.id))
        .limit(page.size)
        .offset(page.offset)
    ))
    found = {
        row[0].id: row
        for row in session.execute(
            select(Problem, Server.name.label("server_name"))
            .outerjoin(Server, Server.id == Problem.server_id)
            .where(Problem.id.in_(ids))
        )
    } if ids else {}
    # A row removed between the two statements (its server deleted) is left out.
    rows = [found[i] for i in ids if i in found]
    return render_template(
        "lm_billing/problems.html",
        rows=rows,
        page=page,
        servers=servers,
        server_id=server_id,
        kind=kind,
        batch=batch,
        batch_arg=request.args.get("batch", ""),
        kinds=PROBLEM_KINDS,
        kind_words=KIND_WORDS,
        fix_words=FIX_WORDS,
        solve_link=solve_link,
        form=FixForm(),
        any_logging_off=any(row[0].kind == "logging_off" for row in rows),
        summary=summary,
        meaning=problem_summary.MEANING,
        detail_repeats=problem_summary.DETAIL_REPEATS_MEANING,
    )


def problems_csv() -> Response:
    """The open problems the Errors page's filter shows, all pages, as CSV (streamed)."""
    from flask import stream_with_context


    _, _, _, where = _filter()
    stmt = (
        select(Problem, Server.name)
        .outerjoin(Server, Server.id == Problem.server_id)
        .where(*where)
        .order_by(problem_summary.kind_order(), Server.name, Problem.object_name, Problem.id)
        .execution_options(yield_per=500)
    )

    def rows() -> Any:
        # Run while streaming, in the session of the context the stream carries.
        yield from get_state().session.execute(stmt)

    return Response(
        stream_with_context(problem_summary.csv_lines(rows(), KIND_WORDS)),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="billing-errors.csv"'},
    )


def _summary(result: Any) -> str:
    """One line from the engine's FixResult, whatever fields it carries."""
    parts: list[str] = []
    for attr, words in (
        ("fixed", N_("%(num)s fixed")),
        ("skipped", N_("%(num)s left as they are")),
        ("failed", N_("%(num)s failed")),
    ):
        value = getattr(result, attr, None)
        if value is None:
            continue
        count = value if isinstance(value, int) else len(value)
        if count:
            parts.append(gettext(words, num=count))
    return ", ".join(parts) if parts else gettext("nothing needed fixing")


@requires("run")
def problems_fix() -> Response:
    form = FixForm()
    back_args: dict[str, Any] = {
        k: v for k, v in request.args.items() if k in ("server", "kind", "batch")
    }
    back = redirect(url_for("lm_billing.problems", **back_args))
    if not form.validate_on_submit():
        flash(
            gettext("Nothing was fixed: the form expired or the selection is not valid; try "
                    "again."),
            "error",
        )
        return back
    ids = form.problem_ids.data or []
    if form.all_matching.data:
        # Every problem the filter shows, on all its pages, not only the ticked rows.
        _, _, _, where = _filter()
        ids = list(
            get_state().session.scalars(
                select(Problem.id).where(*where).order_by(Problem.id).limit(FIX_ALL_LIMIT + 1)
            )
        )
        if len(ids) > FIX_ALL_LIMIT:
            ids = ids[:FIX_ALL_LIMIT]
            flash(
                gettext('Only the first %(limit)s matching problems were fixed in one go; '
                        'click "Fix Selected Objects" again for the rest.',
                        limit=format_number(FIX_ALL_LIMIT)),
                "message",
            )
    if not ids:
        flash(
            gettext('Nothing was fixed: tick the problems to fix, then click "Fix Selected '
                    'Objects".'),
            "error",
        )
        return back
    from ...engine import fixes

    result = fixes.fix_problems(
        ids, actor=actor_name(), enable_logging=bool(form.enable_logging.data)
    )
    flash(gettext("Fix Selected Objects: %(summary)s.", summary=_summary(result)), "message")
    # Fixing makes new problems of its own (a list added to billing needs an owner); they
    # belong to the fix run, not the batch, so the page after a fix shows every batch's.
    back_args.pop("batch", None)
    back = redirect(url_for("lm_billing.problems", **back_args))
    _flash_lines([_fix_line(i) for i in result.failed], "error")
    # One line per fixed object says little after the first few: the count above says it.
    _flash_lines([_fix_line(i) for i in result.items if i.outcome not in ("failed", "not_found")],
                 "message", limit=3)
    return back


def _fix_line(item: FixItem) -> str:
    """What the engine's FixResult line says, in the viewer's language: the problem's words
    the Errors page uses instead of its code, the engine's message and action translated
    (i18n.say), names as they are. In English it is the engine's line word for word."""
    message = say(item.message)
    action = f" {say(item.action)}" if item.action else ""
    if item.kind is None:
        what = gettext("problem %(id)s", id=item.problem_id)
    else:
        words = KIND_WORDS.get(item.kind)
        what = (f"{words[:1].upper()}{words[1:]}: {item.object!r}" if words
                else f"{item.kind} {item.object!r}")
    if item.server:
        line = gettext("%(what)s on server %(server)s: %(message)s.", what=what,
                       server=repr(item.server), message=message)
    else:
        line = gettext("%(what)s: %(message)s.", what=what, message=message)
    return line + action


def _flash_lines(lines: list[str], category: str, limit: int = 10) -> None:
    # Hundreds of ticked rows must not become hundreds of messages (nor overflow the
    # session cookie); the Errors page itself shows what is left.
    for line in lines[:limit]:
        flash(line, category)
    if len(lines) > limit:
        flash(gettext("... and %(num)s more like these.", num=len(lines) - limit), category)
