"""Billing: Utilities — Find Administrator and Find Member across every active hosting server,
"Delete Them" for chosen memberships (confirm first, audited), and the CSV of what was deleted.

The look-ups are engine.lookups' (the CLI calls the same functions). Deleting runs in the
request, at most MAX_DELETE memberships per click: each is one short TclPort call and the
servers are asked in parallel, so a click of the maximum still finishes within a server's
deadline, and the page can show every outcome at once instead of polling for it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any, Final

import sqlalchemy as sa
from flask import Blueprint, Response, render_template, request
from werkzeug.datastructures import MultiDict

from ...engine import lookups
from ...i18n import gettext, say
from ...models import AuditEntry, Server
from ...state import get_state
from ...tclport.records import MAX_MATCHES
from ..access import actor_name, requires
from ..forms.utilities import (
    DeleteMembersForm,
    FindAdminForm,
    FindMemberForm,
    membership_value,
    sentence,
)
from .paging import MAX_ID

# Memberships one "Delete Them" click may delete; more must be ticked in several rounds.
MAX_DELETE: Final = 500

OUTCOME_WORDS: Final = {
    "deleted": "deleted",
    "not_found": "already gone (the server had no such member)",
    "failed": "failed",
}


def utilities() -> str:
    return render_template("lm_billing/utilities_index.html")


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
        membership_value=membership_value, max_matches=MAX_MATCHES, max_delete=MAX_DELETE,
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
    on how many servers); with it, the memberships are deleted and every outcome shown."""
    form = DeleteMembersForm()
    email = (request.form.get("email") or "").strip()
    valid = form.validate_on_submit()
    items = form.membership.data if valid else []
    if valid and not items:
        form.membership.errors = ["Tick the memberships to delete first, then click Delete Them."]
        valid = False
    if valid and len(items) > MAX_DELETE:
        form.membership.errors = [
            f"{len(items):,} memberships are ticked; delete at most {MAX_DELETE} at a time "
            "(tick fewer, delete, then search again for the rest)."
        ]
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
    session = get_state().session
    before = int(session.scalar(sa.select(sa.func.max(AuditEntry.id))) or 0)
    session.commit()
    try:
        result = lookups.delete_memberships(items, actor=actor_name())
    except lookups.LookupInputError as exc:
        form.form_errors.append(gettext("Nothing was deleted: %(why)s",
                                            why=sentence(say(str(exc)))))
        return render_template(
            "lm_billing/utilities_delete_confirm.html", form=form, email=form.email.data,
            items=items, names=names, membership_value=membership_value, confirmable=False,
        ), 409
    upto = int(session.scalar(sa.select(sa.func.max(AuditEntry.id))) or 0)
    session.commit()
    by_server: dict[str, dict[str, int]] = {}
    for d in result.deletions:
        counts = by_server.setdefault(d.server, {"deleted": 0, "not_found": 0, "failed": 0})
        counts[d.outcome] += 1
    return render_template(
        "lm_billing/utilities_deleted.html", result=result, email=form.email.data,
        by_server=by_server, outcome_words=OUTCOME_WORDS, after=before, upto=upto,
    ), (200 if result.exit_code == 0 else 207 if result.exit_code == 1 else 502)


def _bounded_id(name: str) -> int:
    try:
        return min(MAX_ID, max(0, int(request.args.get(name, "0"))))
    except ValueError:
        return 0


CSV_COLUMNS: Final = ("at", "actor", "server", "list", "email", "outcome", "code")


@requires("run")
def deletions_csv() -> Response:
    """What "Delete Them" did, from the audit log: every delete_member entry after audit id
    ``after`` up to ``upto`` (both from the result page), or the latest 1,000 without them."""
    after, upto = _bounded_id("after"), _bounded_id("upto")
    query = sa.select(AuditEntry).where(AuditEntry.action == "delete_member")
    if upto:
        query = query.where(AuditEntry.id > after, AuditEntry.id <= upto)
    rows = get_state().session.scalars(query.order_by(AuditEntry.id.desc()).limit(1000)).all()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in reversed(rows):
        detail = row.detail or {}
        writer.writerow([
            row.at.isoformat(), row.actor,
            *(_cell(detail.get(key)) for key in ("server", "list", "email", "outcome", "code")),
        ])
    name = f"deleted-memberships-{after + 1}-{upto}.csv" if upto else "deleted-memberships.csv"
    return Response(
        out.getvalue(), mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet would run a cell starting with = + - @ as a formula; names come from
    # hosting servers, so they are kept as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/utilities", "utilities", utilities)
    blueprint.add_url_rule("/utilities/find-admin", "find_admin", find_admin)
    blueprint.add_url_rule("/utilities/find-member", "find_member", find_member)
    blueprint.add_url_rule(
        "/utilities/find-member/delete", "delete_members", delete_members, methods=["POST"]
    )
    blueprint.add_url_rule("/utilities/deletions.csv", "deletions_csv", deletions_csv)
