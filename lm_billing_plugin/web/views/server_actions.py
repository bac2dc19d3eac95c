"""Billing: the POST actions on hosting servers — Check connection, Enable Logging and Assign
on a server's detail page; Validate and Sync (in the background) from the Servers index."""

from __future__ import annotations

from flask import flash, redirect, request, url_for
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from ...engine import servers as service
from ...engine.servers import ServerError
from ...i18n import gettext, ngettext, say
from ...models import BillingGroup, MailingList, Server
from ...state import get_state
from ..access import actor_name, requires
from ..forms.servers import ActionForm, AssignForm, ServerSelectionForm
from .problem_summary import gate_words
from .servers import server_or_404


@requires("run")
def server_check(server_id: int) -> str | Response:
    """Check connection step by step; the steps are shown on the page after the redirect."""
    server = server_or_404(server_id)
    form = ActionForm()
    if not form.validate_on_submit():
        flash(gettext("The form expired; click Check connection again."), "error")
        return redirect(url_for("lm_billing.server_detail", server_id=server_id))
    try:
        connection, logging_report = service.check_server(server.id, actor=actor_name())
    except ServerError as exc:
        get_state().session.rollback()
        flash(gettext("The connection was not checked: %(why)s", why=say(exc)), "error")
        return redirect(url_for("lm_billing.server_detail", server_id=server_id))
    from flask import session as cookie

    # Post/redirect/get: a reload shows the page again instead of checking again.
    cookie["lm_billing_check"] = {
        "server_id": server_id,
        "connection": connection.as_dict(),
        "logging": logging_report.as_dict() if logging_report else None,
    }
    return redirect(url_for("lm_billing.server_detail", server_id=server_id) + "#lmb-check-h")


@requires("run")
def server_enable_logging(server_id: int) -> Response:
    server = server_or_404(server_id)
    form = ActionForm()
    if not form.validate_on_submit():
        flash(gettext("The form expired; click the button again."), "error")
        return redirect(url_for("lm_billing.server_detail", server_id=server_id))
    try:
        report = service.enable_logging(server.id, actor=actor_name())
    except ServerError as exc:
        get_state().session.rollback()
        flash(gettext("Enable Logging was not changed: %(why)s", why=say(exc)), "error")
        return redirect(url_for("lm_billing.server_detail", server_id=server_id))
    flash(say(report.message), "message" if report.ok else "error")
    return redirect(url_for("lm_billing.server_detail", server_id=server_id))


@requires("edit")
def server_assign(server_id: int) -> Response:
    """Assign the ticked lists of this server to a billing group (through the engine's gate)."""
    server = server_or_404(server_id)
    session = get_state().session
    form = AssignForm()
    form.group_id.choices = [(gid, "") for gid in session.scalars(select(BillingGroup.id)).all()]
    back = redirect(url_for("lm_billing.server_detail", server_id=server_id) + "#lists")
    if not form.validate_on_submit():
        for errors in form.errors.values():
            for message in errors:
                flash(gettext("Nothing was assigned: %(why)s", why=say(message)), "error")
        return back
    if not form.list_ids.data:
        flash(gettext("Nothing was assigned: tick at least one list first."), "error")
        return back
    valid_ids = set(
        session.scalars(
            select(MailingList.id).where(
                MailingList.server_id == server.id, MailingList.id.in_(form.list_ids.data)
            )
        ).all()
    )
    list_ids = [i for i in form.list_ids.data if i in valid_ids]
    if not list_ids:
        flash(gettext("Nothing was assigned: the ticked lists are not on this server."), "error")
        return back
    from ...catalog import assignment

    try:
        created = assignment.assign(
            int(form.group_id.data or 0),
            server_id=server.id,
            list_ids=list_ids,
            actor=actor_name(),
        )
    except (assignment.GateError, assignment.AssignmentError) as exc:
        session.rollback()
        flash(gettext("Nothing was assigned: %(why)s", why=gate_words(exc)), "error")
        return back
    group = session.get(BillingGroup, form.group_id.data)
    group_name = group.name if group else str(form.group_id.data)
    had = len(list_ids) - created
    if had:
        flash(ngettext('%(num)s list assigned to the billing group "%(group)s" (%(had)s had it '
                       "already).",
                       '%(num)s lists assigned to the billing group "%(group)s" (%(had)s had '
                       "it already).", created, group=group_name, had=had), "message")
    else:
        flash(ngettext('%(num)s list assigned to the billing group "%(group)s".',
                       '%(num)s lists assigned to the billing group "%(group)s".',
                       created, group=group_name), "message")
    return back


# --- Validate / sync (background) -----------------------------------------------------------


def _selected_server_ids(form: ServerSelectionForm) -> list[int]:
    ids = form.server_ids.data or []
    if not ids:
        return []
    rows = (
        get_state()
        .session.execute(select(Server.id, Server.name, Server.active).where(Server.id.in_(ids)))
        .all()
    )
    inactive = [row.name for row in rows if not row.active]
    if inactive:
        # A deactivated server only keeps history; reading it again would bill nothing.
        flash(ngettext("Skipped a deactivated server: %(names)s (kept as billing history; "
                       "deactivated servers are not validated or synced).",
                       "Skipped %(num)s deactivated servers: %(names)s (kept as billing "
                       "history; deactivated servers are not validated or synced).",
                       len(inactive), names=", ".join(inactive)), "message")
    active = {row.id for row in rows if row.active}
    return [i for i in ids if i in active]


def _back_to_servers(error: str) -> Response:
    flash(error, "error")
    return redirect(url_for("lm_billing.servers"))


def _start(kind: str, server_ids: list[int] | None) -> Response:
    from .runs import start_batch

    batch_id = start_batch(kind, server_ids)
    return redirect(url_for("lm_billing.batch", batch_id=batch_id))


def _any_active_server() -> bool:
    return bool(get_state().session.scalar(
        select(func.count()).select_from(Server).where(Server.active.is_(True))))


@requires("run")
def servers_validate() -> Response:
    """Validate All Servers (scope=all) or Validate Selected Servers, in the background."""
    form = ServerSelectionForm()
    if not form.validate_on_submit():
        return _back_to_servers(gettext(
            "Nothing was started: the form expired or the selection is not valid; try again."))
    if request.form.get("scope") == "all":
        if not _any_active_server():
            return _back_to_servers(gettext(
                'There is no server to validate yet: click "Create New Server" first.'))
        return _start("validate", None)
    ids = _selected_server_ids(form)
    if not ids:
        return _back_to_servers(gettext(
            "Nothing was validated: tick the servers to validate first "
            '(or click "Validate All Servers").'))
    return _start("validate", ids)


@requires("run")
def servers_sync() -> Response:
    """Sync All Servers (scope=all: every active one, the batch `sync --all` and the API
    start) or Sync Selected Servers, in the background."""
    form = ServerSelectionForm()
    if not form.validate_on_submit():
        return _back_to_servers(gettext(
            "Nothing was started: the form expired or the selection is not valid; try again."))
    if request.form.get("scope") == "all":
        if not _any_active_server():
            return _back_to_servers(gettext(
                'There is no server to sync yet: click "Create New Server" first.'))
        return _start("sync", None)
    ids = _selected_server_ids(form)
    if not ids:
        return _back_to_servers(gettext("Nothing was synced: tick the servers to sync first."))
    return _start("sync", ids)
