"""Billing: Servers — the plugin's index, the create/edit/delete forms and the per-server detail
page; the POST actions on servers (check, enable logging, assign, validate, sync) are in
server_actions.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from flask import abort, current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from ...engine import servers as service
from ...engine import versions
from ...engine.servers import ServerError
from ...engine.versions import ChangedMeanwhile
from ...i18n import N_, Words, gettext, say
from ...models import (
    Assignment,
    BillingGroup,
    Customer,
    MailingList,
    Problem,
    Run,
    Server,
    Site,
    TaskRun,
    TaskState,
    Usage,
)
from ...reports import overview as figures
from ...state import get_state
from ...tclport.client import DEFAULT_PORT
from ..access import actor_name, requires
from ..forms.servers import ActionForm, AssignForm, ServerForm, ServerSelectionForm
from ..forms.versioned import posted_version
from .paging import MAX_SEARCH, Page, clamp, order_by, page_from_request, page_number

log = logging.getLogger("lm_billing_plugin.views.servers")

# Server.status in the words of the Servers table.
STATUS_WORDS: dict[str, str] = {
    "unchecked": N_("not checked yet"),
    "ok": N_("reachable"),
    "logging_off": N_("logging off"),
    "host_denied": N_("refused: not in TCLPORT Hosts"),
    "auth_failed": N_("password rejected"),
    "unreachable": N_("unreachable"),
    "error": N_("protocol error"),
    "interrupted": N_("interrupted"),
}
# The Overview's status buckets (reports.overview.BUCKET_ORDER) as the pages name them
# (a word table: translated when read; the Overview uses it too).
BUCKET_WORDS = Words({
    "reachable": N_("reachable"),
    "refused": N_("refused"),
    "unreachable": N_("unreachable"),
    "logging off": N_("logging off"),
    "not checked": N_("not checked"),
    "other trouble": N_("other trouble"),
})
STATUS_CLASS: dict[str, str] = {
    "unchecked": "lmb-st-none",
    "ok": "lmb-st-ok",
    "logging_off": "lmb-st-warn",
}

# Open problems listed on a server's page before "see all on the Errors page".
PROBLEMS_SHOWN = 10

RUN_KIND_WORDS = Words({
    "check": N_("Check connection"),
    "validate": N_("Validate"),
    "sync": N_("Sync"),
    "fix": N_("Fix"),
    "enable_logging": N_("Enable logging"),
})


def status_words(server: Server) -> str:
    if not server.active:
        return gettext("deactivated")
    words = STATUS_WORDS.get(server.status)
    return gettext(words) if words else server.status


def status_class(server: Server) -> str:
    if not server.active:
        return "lmb-st-none"
    return STATUS_CLASS.get(server.status, "lmb-st-bad")


def _open_problem_counts() -> Any:
    return (
        select(Problem.server_id.label("server_id"), func.count().label("n"))
        .where(Problem.status == "open")
        .group_by(Problem.server_id)
        .subquery("open_problems")
    )


@dataclass(frozen=True, slots=True)
class BackgroundSummary:
    """What the Servers page says about scheduled validation."""

    last_started: datetime | None
    last_status: str | None
    next_run: datetime | None
    link: str | None


def background_summary() -> BackgroundSummary | None:
    """Last and next scheduled run, from the schedule tables (two small queries)."""
    session = get_state().session
    next_run = session.scalar(select(func.min(TaskState.next_run_at)))
    last = session.execute(
        select(TaskRun.started_at, TaskRun.status).order_by(TaskRun.started_at.desc()).limit(1)
    ).first()
    link = None
    if "lm_billing.background" in current_app.view_functions:
        link = url_for("lm_billing.background")
    if next_run is None and last is None and link is None:
        return None
    return BackgroundSummary(
        last_started=last.started_at if last else None,
        last_status=last.status if last else None,
        next_run=next_run,
        link=link,
    )


# --- Servers index ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusFilter:
    """One link of the Servers page's status filter: the Overview's bucket, its ?status=
    value, how many active servers it holds, and whether it is the one shown."""

    bucket: str
    slug: str
    count: int
    current: bool


def _status_filter() -> tuple[str | None, str | None]:
    """(the bucket asked for by ?status=, the unknown value when it names none). A bad value
    comes from a hand-edited URL or an old bookmark: it is ignored with a note, not a 400."""
    value = request.args.get("status", "")
    if not value:
        return None, None
    by_slug = {slug: bucket for bucket, slug in figures.BUCKET_SLUGS.items()}
    if value in by_slug:
        return by_slug[value], None
    return None, value[:40]


def servers() -> str:
    """The Servers table: one query for the page's rows (with their open-problem counts and
    the total), one for the status filter's counts (the Overview's buckets), one for the
    banner's count of open problems. ``?status=`` (a bucket's slug) shows only the active
    servers of that bucket, with paging and sorting as usual."""
    state = get_state()
    session = state.session
    bucket, unknown = _status_filter()
    counts = _open_problem_counts()
    problems_col = func.coalesce(counts.c.n, 0)
    sort_keys: dict[str, Any] = {
        "name": Server.name,
        "host": Server.host,
        "comments": Server.comments,
        "version": Server.version,
        "validated": Server.validated_at,
        "synced": Server.synced_at,
        "status": Server.status,
        "problems": problems_col,
    }
    slug = figures.BUCKET_SLUGS[bucket] if bucket else None
    page = page_from_request(
        "lm_billing.servers", sort_keys, default_sort="name", size=state.settings.page_size,
        keep={"status": slug},
    )
    where = figures.bucket_condition(bucket) if bucket else sa.true()

    def fetch() -> list[Any]:
        stmt = (
            select(Server, problems_col.label("problems"), func.count().over().label("total"))
            .outerjoin(counts, counts.c.server_id == Server.id)
            .where(where)
            .order_by(*order_by(page, sort_keys, Server.id))
            .limit(page.size)
            .offset(page.offset)
        )
        return list(session.execute(stmt).all())

    rows = fetch()
    if rows:
        page.total = int(rows[0].total)
    elif page.number > 1:
        # Past the end (a bookmark after deletions): show the last page instead.
        page.total = int(
            session.scalar(select(func.count()).select_from(Server).where(where)) or 0)
        clamp(page)
        rows = fetch()
    by_bucket = figures.servers_by_status(session)
    filters = [
        StatusFilter(b, figures.BUCKET_SLUGS[b], sum(by_bucket.get(b, {}).values()), b == bucket)
        for b in figures.BUCKET_ORDER
    ]
    open_total = int(
        session.scalar(select(func.count()).select_from(Problem).where(Problem.status == "open"))
        or 0
    )
    return render_template(
        "lm_billing/servers.html",
        rows=rows,
        page=page,
        open_total=open_total,
        form=ServerSelectionForm(),
        background=background_summary(),
        status_words=status_words,
        status_class=status_class,
        filters=filters,
        bucket=bucket,
        unknown_status=unknown,
        bucket_words=BUCKET_WORDS,
    )


# --- Create / edit / delete -----------------------------------------------------------------


def server_or_404(server_id: int) -> Server:
    server = get_state().session.get(Server, server_id)
    if server is None:
        abort(404)
    return server


def _apply_field_errors(form: ServerForm, exc: ServerError) -> None:
    """Put the service's messages next to their fields; the rest above the form."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, dict):
        for name, message in errors.items():
            field = getattr(form, name, None)
            if field is not None and hasattr(field, "errors"):
                field.errors = [*field.errors, say(message)]
            else:
                form.form_errors.append(say(message))
        return
    form.form_errors.append(say(str(exc)))


@requires("edit")
def server_new() -> str | Response:
    form = ServerForm()
    if form.validate_on_submit():
        name = (form.name.data or "").strip()
        try:
            server = service.create_server(
                name,
                (form.host.data or "").strip(),
                int(form.port.data or DEFAULT_PORT),
                form.comments.data or "",
                form.password.data or None,
                actor=actor_name(),
            )
        except ServerError as exc:
            get_state().session.rollback()
            _apply_field_errors(form, exc)
        else:
            flash(
                gettext('Server "%(name)s" created. Tick it on the Servers page and click '
                        '"Validate Selected Servers" (or click Validate here) to read its lists.',
                        name=name),
                "message",
            )
            return redirect(url_for("lm_billing.server_detail", server_id=server.id))
    # Write-only: whatever was typed is never sent back.
    form.password.data = ""
    return render_template("lm_billing/server_form.html", form=form, server=None)


@requires("edit")
def server_edit(server_id: int) -> str | Response:
    server = server_or_404(server_id)
    form = ServerForm(obj=None if request.method == "POST" else server)
    if form.validate_on_submit():
        name = (form.name.data or "").strip()
        password: str | None = form.password.data or None
        if form.default_password.data:
            password = ""
        try:
            service.update_server(
                server.id,
                name=name,
                host=(form.host.data or "").strip(),
                port=int(form.port.data or DEFAULT_PORT),
                comments=form.comments.data or "",
                password=password,
                actor=actor_name(),
                expected_version=posted_version(form),
            )
        except ChangedMeanwhile as exc:
            # Nothing was written: show what is stored now, with its version, to review.
            get_state().session.rollback()
            server = server_or_404(server_id)
            form = ServerForm(formdata=None, obj=server)
            form.form_errors.append(str(exc))
            form.loaded_version.data = exc.current_version
        except ServerError as exc:
            get_state().session.rollback()
            _apply_field_errors(form, exc)
            server = server_or_404(server_id)
        else:
            flash(gettext('Server "%(name)s" saved.', name=name), "message")
            return redirect(url_for("lm_billing.server_detail", server_id=server.id))
    if request.method != "POST":
        form.loaded_version.data = versions.fields_version(server,
                                                           versions.SERVER_OPERATOR_FIELDS)
    form.password.data = ""
    return render_template("lm_billing/server_form.html", form=form, server=server)


@requires("edit")
def server_delete(server_id: int) -> str | Response:
    server = server_or_404(server_id)
    form = ActionForm()
    session = get_state().session
    if form.validate_on_submit():
        name = server.name
        try:
            outcome = service.delete_server(server.id, actor=actor_name())
        except ServerError as exc:
            session.rollback()
            flash(gettext("Server %(name)s was not deleted: %(reason)s", name=repr(name),
                          reason=say(str(exc))), "error")
            return redirect(url_for("lm_billing.server_detail", server_id=server_id))
        if outcome == "deactivated":
            flash(
                gettext('Server "%(name)s" has billing history (assigned lists), so it was '
                        "deactivated, not erased: its lists, assignments and history stay.",
                        name=name),
                "message",
            )
        else:
            flash(gettext('Server "%(name)s" deleted.', name=name), "message")
        return redirect(url_for("lm_billing.servers"))
    assigned = session.scalar(
        select(func.count()).select_from(Assignment).where(Assignment.server_id == server.id)
    )
    lists = session.scalar(
        select(func.count()).select_from(MailingList).where(MailingList.server_id == server.id)
    )
    return render_template(
        "lm_billing/server_delete.html",
        server=server,
        form=form,
        assigned=int(assigned or 0),
        lists=int(lists or 0),
    )


# --- Detail ---------------------------------------------------------------------------------


def _first_of_month(today: date) -> date:
    return today.replace(day=1)


def _active_assignments(server_id: int, today: date) -> list[Any]:
    """This server's assignments in force today, with group and customer, in one query."""
    stmt = (
        select(
            Assignment.object_type,
            Assignment.site_id,
            Assignment.list_id,
            BillingGroup.id.label("group_id"),
            BillingGroup.name.label("group_name"),
            Customer.company.label("customer"),
        )
        .join(BillingGroup, BillingGroup.id == Assignment.group_id)
        .join(Customer, Customer.id == BillingGroup.customer_id)
        .where(
            Assignment.server_id == server_id,
            Assignment.start_date <= today,
            # End dates are exclusive: the first day no longer covered.
            sa.or_(Assignment.end_date.is_(None), Assignment.end_date > today),
        )
    )
    return list(get_state().session.execute(stmt).all())


@dataclass(frozen=True, slots=True)
class Owner:
    group_id: int
    group: str
    customer: str
    via: str  # "list", "site" or "server"


def _owners(server_id: int, today: date) -> tuple[dict[int, Owner], dict[int, Owner], Owner | None]:
    by_list: dict[int, Owner] = {}
    by_site: dict[int, Owner] = {}
    whole: Owner | None = None
    for row in _active_assignments(server_id, today):
        owner = Owner(row.group_id, row.group_name, row.customer, row.object_type)
        if row.object_type == "list" and row.list_id is not None:
            by_list[row.list_id] = owner
        elif row.object_type == "site" and row.site_id is not None:
            by_site[row.site_id] = owner
        elif row.object_type == "server":
            whole = owner
    return by_list, by_site, whole


def detail_context(server: Server, check: Any = None) -> dict[str, Any]:
    """Everything the detail page shows; a fixed number of queries whatever the list count."""
    state = get_state()
    session = state.session
    size = state.settings.page_size
    # A search longer than any list name finds nothing; cut it so the page stays small.
    q = request.args.get("q", "").strip()[:MAX_SEARCH]
    today = state.settings.billing_today()

    list_sort: dict[str, Any] = {
        "name": MailingList.name,
        "site": MailingList.site_name,
        "members": MailingList.members,
        "status": MailingList.status,
    }
    lpage = page_from_request(
        "lm_billing.server_detail",
        list_sort,
        default_sort="name",
        size=size,
        keep={"q": q},
        view_args={"server_id": server.id},
        page_arg="lpage",
    )
    list_stmt = select(MailingList, func.count().over().label("total")).where(
        MailingList.server_id == server.id
    )
    if q:
        list_stmt = list_stmt.where(MailingList.name.contains(q, autoescape=True))
    list_rows = session.execute(
        list_stmt.order_by(*order_by(lpage, list_sort, MailingList.id))
        .limit(lpage.size)
        .offset(lpage.offset)
    ).all()
    lpage.total = int(list_rows[0].total) if list_rows else 0
    lists = [row[0] for row in list_rows]

    site_stmt = select(Site, func.count().over().label("total")).where(Site.server_id == server.id)
    if q:
        site_stmt = site_stmt.where(Site.name.contains(q, autoescape=True))
    spage_number = page_number(request.args.get("spage"))
    spage = Page(
        endpoint="lm_billing.server_detail",
        sort=lpage.sort,
        direction=lpage.direction,
        number=spage_number,
        size=size,
        keep={"q": q, "lpage": lpage.number},
        view_args={"server_id": server.id},
        page_arg="spage",
    )
    site_rows = session.execute(
        site_stmt.order_by(Site.name, Site.id).limit(spage.size).offset(spage.offset)
    ).all()
    spage.total = int(site_rows[0].total) if site_rows else 0
    sites = [row[0] for row in site_rows]
    site_ids_by_name = (
        dict(session.execute(select(Site.name, Site.id).where(Site.server_id == server.id)).all())
        if lists
        else {}
    )

    by_list, by_site, whole = _owners(server.id, today)
    usage: dict[int, tuple[int, int]] = {}
    if lists:
        usage = {
            row.list_id: (int(row.messages), int(row.recipients))
            for row in session.execute(
                select(Usage.list_id, Usage.messages, Usage.recipients).where(
                    Usage.server_id == server.id,
                    Usage.period == _first_of_month(today),
                    Usage.list_id.in_([ml.id for ml in lists]),
                )
            )
        }

    def owner_of_list(ml: MailingList) -> Owner | None:
        site_id = site_ids_by_name.get(ml.site_name)
        return by_list.get(ml.id) or (by_site.get(site_id) if site_id else None) or whole

    runs = session.scalars(
        select(Run).where(Run.server_id == server.id).order_by(Run.started_at.desc()).limit(20)
    ).all()
    problems = session.scalars(
        select(Problem)
        .where(Problem.server_id == server.id, Problem.status == "open")
        .order_by(Problem.kind, Problem.id)
        # A taste only: the Errors page (linked below the list) pages through all of them.
        .limit(PROBLEMS_SHOWN)
    ).all()
    problems_total = int(
        session.scalar(
            select(func.count())
            .select_from(Problem)
            .where(Problem.server_id == server.id, Problem.status == "open")
        )
        or 0
    )
    groups = session.execute(
        select(BillingGroup.id, BillingGroup.name, Customer.company)
        .join(Customer, Customer.id == BillingGroup.customer_id)
        .order_by(Customer.company, BillingGroup.name, BillingGroup.id)
    ).all()
    assign_form = AssignForm()
    assign_form.group_id.choices = [(g.id, f"{g.company}: {g.name}") for g in groups]
    return {
        "server": server,
        "check": check,
        "lists": lists,
        "lpage": lpage,
        "sites": sites,
        "spage": spage,
        "q": q,
        "usage": usage,
        "owner_of_list": owner_of_list,
        "site_owner": lambda site: by_site.get(site.id) or whole,
        "whole_owner": whole,
        "runs": runs,
        "run_words": RUN_KIND_WORDS,
        "problems": problems,
        "problems_total": problems_total,
        "action_form": ActionForm(),
        "assign_form": assign_form,
        "has_groups": bool(groups),
        "status_words": status_words,
        "status_class": status_class,
        "logging_off": _logging_off(server),
        "month": _first_of_month(today),
        "lm_billing_endpoints": current_app.view_functions,
    }


def _logging_off(server: Server) -> bool:
    if server.status == "logging_off":
        return True
    return server.logging_mode is not None and server.logging_mode != "lists"


def server_detail(server_id: int) -> str:
    server = server_or_404(server_id)
    from flask import session as cookie

    # The last "Check connection" of this server, shown once after its redirect.
    check = cookie.pop("lm_billing_check", None)
    if not (isinstance(check, dict) and check.get("server_id") == server_id):
        check = None
    return render_template("lm_billing/server_detail.html", **detail_context(server, check))
