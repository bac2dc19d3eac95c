"""Billing: Utilities — Find Administrator and Find Member across every active hosting server,
"Delete Them" for chosen memberships (confirm first, audited), and the CSV of what was deleted.

The look-ups are engine.lookups' and the deletions engine.deletions' (the CLI calls the same
functions). "Delete Them" stores a delete run and runs it on the pages' background executor
(the one validation batches, bill runs and sends share): an erasure request may name thousands
of memberships on many servers, more than a request should wait for, so the browser goes to
the run's progress page, which refreshes until every server has answered and then keeps the
record (and its CSV). The bound of one run is what Find Member can show: at most MAX_MATCHES
memberships per server.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from typing import Any, Final

import sqlalchemy as sa
from flask import Flask, Response, abort, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict

from ...engine import deletions, lookups
from ...i18n import N_, gettext, say
from ...models import Server
from ...sqlite import writes
from ...state import get_state
from ...tclport.records import MAX_MATCHES
from ..access import actor_name, is_allowed, requires
from ..csvout import text_cell
from ..forms.utilities import (
    DeleteMembersForm,
    FindAdminForm,
    FindMemberForm,
    membership_value,
    sentence,
)
from .runs import submit_background

log = logging.getLogger("lm_billing_plugin.views.utilities")

OUTCOME_WORDS: Final = {
    "pending": N_("waiting"),
    "deleted": N_("deleted"),
    "not_found": N_("already gone (the server had no such member)"),
    "failed": N_("failed"),
    "interrupted": N_("interrupted (may or may not be deleted)"),
}


def outcome_words() -> dict[str, str]:
    """OUTCOME_WORDS in the page's language."""
    return {key: gettext(word) for key, word in OUTCOME_WORDS.items()}


def utilities() -> str:
    """The three utilities, and for those who may delete, the latest delete runs (each with
    its page and CSV: where an operator finds the record of an erasure request again)."""
    runs = []
    if is_allowed("run"):
        _sweep()
        runs = deletions.recent_delete_runs(get_state().session)
    return render_template("lm_billing/utilities_index.html", runs=runs)


def _search_args(form_class: type[Any]) -> Any:
    # Only the field's own argument: sort or page arguments of a bookmark are not input.
    return form_class(formdata=MultiDict(request.args) if request.args else None)


def find_admin() -> tuple[str, int]:
    form = _search_args(FindAdminForm)
    search: lookups.AdminSearch | None = None
    if "pattern" in request.args and form.validate():
        try:
            search = lookups.find_admin(form.pattern.data)
        except lookups.LookupInputError as exc:  # the form's rule and the service agree
            form.pattern.errors = [sentence(say(str(exc)))]
    # Bad input is a field error on an ordinary page (200), as on every Billing form.
    return render_template(
        "lm_billing/utilities_find_admin.html", form=form, search=search,
        max_matches=MAX_MATCHES,
    ), 200


def find_member() -> tuple[str, int]:
    form = _search_args(FindMemberForm)
    search: lookups.MemberSearch | None = None
    if "email" in request.args and form.validate():
        try:
            search = lookups.find_member(form.email.data)
        except lookups.LookupInputError as exc:
            form.email.errors = [sentence(say(str(exc)))]
    return render_template(
        "lm_billing/utilities_find_member.html", form=form, search=search,
        delete_form=DeleteMembersForm(formdata=None, email=form.email.data or ""),
        membership_value=membership_value, max_matches=MAX_MATCHES,
    ), 200


def _server_names(ids: Iterable[int]) -> dict[int, tuple[str, bool]]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = get_state().session.execute(
        sa.select(Server.id, Server.name, Server.active).where(Server.id.in_(wanted))
    ).all()
    return {r.id: (r.name, r.active) for r in rows}


@requires("run")
def delete_members() -> Any:
    """Two steps on one URL: without ``confirmed`` the page asks (naming how many memberships
    on how many servers); with it, the delete run is stored and started in the background,
    and the browser goes to its progress page (303)."""
    form = DeleteMembersForm()
    email = (request.form.get("email") or "").strip()
    valid = form.validate_on_submit()
    items = form.membership.data if valid else []
    if valid and not items:
        form.membership.errors = [
            gettext("Tick the memberships to delete first, then click Delete Them.")]
        valid = False
    names = _server_names(m.server_id for m in items)
    if not valid:
        return render_template(
            "lm_billing/utilities_delete_confirm.html", form=form, email=email,
            items=items, names=names, membership_value=membership_value, confirmable=False,
        ), 400
    if not form.confirmed.data:
        return render_template(
            "lm_billing/utilities_delete_confirm.html", form=form, email=form.email.data,
            items=items, names=names, membership_value=membership_value, confirmable=True,
        )
    get_state().session.commit()
    try:
        run_id = start_delete_run(items, email=form.email.data)
    except lookups.LookupInputError as exc:
        form.form_errors.append(gettext("Nothing was deleted: %(why)s",
                                            why=sentence(say(str(exc)))))
        return render_template(
            "lm_billing/utilities_delete_confirm.html", form=form, email=form.email.data,
            items=items, names=names, membership_value=membership_value, confirmable=False,
        ), 409
    return redirect(url_for("lm_billing.delete_run", delete_run_id=run_id), 303)


def start_delete_run(items: Iterable[lookups.Membership], *, email: str) -> int:
    """Store the delete run (the actor is the request's user or token) and run it on the
    background executor, as "Delete Them" does; returns its id. Raises LookupInputError
    (nothing stored). The page and the API both start runs here."""
    run_id = deletions.create_delete_run(items, actor=actor_name(), email=email)
    submit_background(lambda app: _delete_in_app(app, run_id))
    return run_id


def _delete_in_app(app: Flask, run_id: int) -> None:
    with app.app_context(), writes():
        try:
            deletions.run_delete_run(run_id)
        except Exception:
            # The run is marked failed (its pending items stay pending); the page shows it.
            log.exception("background delete run %s failed", run_id)
        finally:
            get_state(app).remove_session()


def _sweep() -> None:
    """Mark interrupted the delete runs whose process stopped (nothing moved for
    LM_BILLING_LEASE_SECONDS): a plain read, and writes only when one did."""
    state = get_state()
    deletions.sweep_stale_delete_runs(state.session, state.settings.lease_seconds)


def _run_or_404(run_id: int) -> deletions.DeleteResult:
    try:
        return deletions.delete_outcomes(run_id)
    except lookups.LookupInputError:
        abort(404, description=gettext(
            "No such delete run. Search again on Billing: Utilities: Find Member."))


@requires("run")
def delete_run(delete_run_id: int) -> str:
    """The delete run's progress (refreshing itself while it runs) and, once finished, what
    was deleted where. A run whose process stopped (nothing moved for LM_BILLING_LEASE_SECONDS)
    is marked interrupted first, so its page says so without waiting for another run."""
    _sweep()
    result = _run_or_404(delete_run_id)
    return render_template(
        "lm_billing/utilities_deleted.html", result=result, email=result.email,
        outcome_words=outcome_words(),
    )


CSV_COLUMNS: Final = ("at", "actor", "server", "list", "email", "outcome", "code", "message")


@requires("run")
def delete_run_csv(delete_run_id: int) -> Response:
    """What the delete run did, one row per membership (pending ones too while it runs): the
    record an operator keeps of an erasure request."""
    result = _run_or_404(delete_run_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for d in result.deletions:
        writer.writerow([
            d.at.isoformat() if d.at else "", text_cell(result.actor), text_cell(d.server),
            text_cell(d.list), text_cell(d.email), d.outcome, d.code or "", text_cell(d.message),
        ])
    return Response(
        out.getvalue(), mimetype="text/csv",
        headers={"Content-Disposition":
                 f'attachment; filename="deleted-memberships-run-{result.run_id}.csv"'},
    )
