"""The Assign page: assign a server's lists, sites or the whole server to a billing group, and
unassign, through catalog.assignment and its gate."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response
from wtforms import SelectChoice

from ...i18n import N_, gettext, ngettext
from ...models import (
    Assignment,
    BillingGroup,
    Customer,
    MailingList,
    Server,
    Site,
)
from ..access import actor_name, requires
from ..forms.catalog import AssignForm, UnassignForm
from ..said import said
from .catalog import (
    active_assignment_clause,
    billing_day,
    db_session,
    page_size,
    search_clause,
)
from .customers import render_customer_detail
from .paging import MAX_ID, MAX_SEARCH, Page, clamp, order_by, page_from_request
from .problem_summary import gate_words


def _int_args(values: Iterable[str]) -> list[int]:
    out: list[int] = []
    for value in values:
        try:
            number = int(value)
        except ValueError:
            continue  # a hand-edited URL; ignore the junk, keep the rest
        if 0 < number <= MAX_ID:
            out.append(number)
    return out


def _group_choices(session: Session) -> list[Any]:
    rows = session.execute(
        sa.select(BillingGroup.id, Customer.company, BillingGroup.name, Customer.is_active)
        .join(Customer, Customer.id == BillingGroup.customer_id)
        .order_by(Customer.company, BillingGroup.name, BillingGroup.id)
    )
    return [
        SelectChoice(gid, f"{company}: {name}" + ("" if active else " (inactive customer)"))
        for gid, company, name, active in rows
    ]


LIST_SORTS: dict[str, Any] = {
    "name": MailingList.name,
    "site": MailingList.site_name,
    "members": MailingList.members,
}


def _owners(session: Session, server_id: int, list_ids: list[int]) -> dict[tuple[str, int], str]:
    """Who pays now for the server, its sites and the shown lists: (type, id) -> group."""
    label = Customer.company + ": " + BillingGroup.name
    rows = session.execute(
        sa.select(Assignment.object_type, Assignment.site_id, Assignment.list_id, label)
        .join(BillingGroup, BillingGroup.id == Assignment.group_id)
        .join(Customer, Customer.id == BillingGroup.customer_id)
        .where(
            Assignment.server_id == server_id,
            active_assignment_clause(billing_day()),
            sa.or_(
                Assignment.object_type != "list",
                Assignment.list_id.in_(list_ids or [-1]),
            ),
        )
    ).all()
    owners: dict[tuple[str, int], str] = {}
    for object_type, site_id, list_id, name in rows:
        key_id = {"server": server_id, "site": site_id, "list": list_id}[object_type]
        owners.setdefault((object_type, int(key_id or 0)), name)
    return owners


@requires("edit")
def assign() -> Any:
    session = db_session()
    form = AssignForm()
    form.group_id.choices = [
        SelectChoice(0, gettext("— choose a billing group —")),
        *_group_choices(session),
    ]
    source = request.form if request.method == "POST" else request.args
    server_id = _int_args([source.get("server_id", "")])
    server = session.get(Server, server_id[0]) if server_id else None
    chosen_lists = set(_int_args(source.getlist("list_id")))
    chosen_sites = set(_int_args(source.getlist("site_id")))
    gate_error = ""
    status = 200

    if request.method == "GET":
        group_arg = _int_args([request.args.get("group_id", "")])
        if group_arg:
            form.group_id.data = group_arg[0]
        if server is not None:
            form.server_id.data = str(server.id)
    elif form.validate_on_submit():
        if server is None:
            form.server_id.errors = [gettext("Choose a server first.")]
        else:
            outcome = _do_assign(session, form, server, chosen_lists, chosen_sites)
            if isinstance(outcome, Response):
                return outcome
            gate_error = outcome
            status = 409 if gate_error else 200

    return (
        _render_assign(session, form, server, chosen_lists, chosen_sites, gate_error),
        status,
    )


def _do_assign(
    session: Session,
    form: AssignForm,
    server: Server,
    list_ids: set[int],
    site_ids: set[int],
) -> Response | str:
    """Bulk-assign through the engine; a redirect when done, else the gate's refusal ("" when
    the form got field errors instead)."""
    from ...catalog import assignment

    group = session.get(BillingGroup, form.group_id.data)
    if group is None:
        form.group_id.errors = [gettext("Choose a billing group.")]
        return ""
    whole = bool(form.whole_server.data)
    if not whole and not list_ids and not site_ids:
        form.whole_server.errors = [
            gettext("Tick the lists or sites to assign, or tick Assign the whole server.")
        ]
        return ""
    # Only this server's objects: a forged id from another server must not slip in.
    own_lists = set(
        session.scalars(
            sa.select(MailingList.id).where(
                MailingList.server_id == server.id, MailingList.id.in_(list_ids or [-1])
            )
        )
    )
    own_sites = set(
        session.scalars(
            sa.select(Site.id).where(Site.server_id == server.id, Site.id.in_(site_ids or [-1]))
        )
    )
    if own_lists != list_ids or own_sites != site_ids:
        form.whole_server.errors = [
            gettext("Some ticked lists or sites are not on server %(server)s (any more): "
                    "reload the page and tick them again.", server=server.name)
        ]
        return ""
    try:
        count = assignment.assign(
            group.id,
            server_id=server.id,
            site_ids=sorted(site_ids),
            list_ids=sorted(list_ids),
            whole_server=whole,
            actor=actor_name(),
            start=form.start.data,
            is_free=bool(form.is_free.data),
        )
    except assignment.GateError as exc:
        return gate_words(exc)
    except assignment.AssignmentError as exc:
        form.whole_server.errors = [gettext("Nothing was assigned: %(why)s.", why=said(exc))]
        return ""
    flash(ngettext("Assigned %(num)s object on server %(server)s to billing group %(group)s.",
                   "Assigned %(num)s objects on server %(server)s to billing group %(group)s.",
                   count, server=server.name, group=group.name))
    return redirect(url_for("lm_billing.customer_detail", customer_id=group.customer_id))


def _render_assign(
    session: Session,
    form: AssignForm,
    server: Server | None,
    chosen_lists: set[int],
    chosen_sites: set[int],
    gate_error: str,
) -> str:
    q = request.args.get("q", "").strip()[:MAX_SEARCH]
    servers = session.execute(
        sa.select(Server.id, Server.name).where(Server.active.is_(True)).order_by(Server.name)
    ).all()
    page: Page | None = None
    lists: list[Any] = []
    sites: list[Any] = []
    owners: dict[tuple[str, int], str] = {}
    if server is not None:
        keep: dict[str, Any] = {"server_id": server.id, "q": q}
        if form.group_id.data:
            keep["group_id"] = form.group_id.data
        page = page_from_request(
            "lm_billing.assign", LIST_SORTS, default_sort="name", size=page_size(), keep=keep
        )
        where: list[Any] = [MailingList.server_id == server.id, MailingList.status == "active"]
        if q:
            where.append(sa.or_(search_clause(MailingList.name, q),
                                search_clause(MailingList.site_name, q)))
        page.total = (
            session.scalar(sa.select(sa.func.count()).select_from(MailingList).where(*where)) or 0
        )
        clamp(page)
        lists = list(
            session.scalars(
                sa.select(MailingList)
                .where(*where)
                .order_by(*order_by(page, LIST_SORTS, MailingList.id))
                .offset(page.offset)
                .limit(page.size)
            )
        )
        sites = list(
            session.scalars(
                sa.select(Site)
                .where(Site.server_id == server.id, Site.status == "active")
                .order_by(Site.name)
            )
        )
        owners = _owners(session, server.id, [lst.id for lst in lists])
    return render_template(
        "lm_billing/assign.html",
        form=form,
        server=server,
        servers=servers,
        lists=lists,
        sites=sites,
        owners=owners,
        page=page,
        q=q,
        chosen_lists=chosen_lists,
        chosen_sites=chosen_sites,
        gate_error=gate_error,
    )


@requires("edit")
def unassign() -> Any:
    from ...catalog import assignment

    session = db_session()
    form = UnassignForm()
    customer_ids = _int_args([request.form.get("customer_id", "")])
    customer = session.get(Customer, customer_ids[0]) if customer_ids else None
    if customer is None:
        abort(400, description=N_("Unassign from a customer's page: reload it and try again."))
    ids = _int_args(request.form.getlist("assignment_id"))
    if not form.validate_on_submit():
        return render_customer_detail(session, customer, form, status=400)
    # Only this customer's assignments: a forged id of another customer must not end theirs.
    own = list(
        session.scalars(
            sa.select(Assignment.id)
            .join(BillingGroup, BillingGroup.id == Assignment.group_id)
            .where(BillingGroup.customer_id == customer.id, Assignment.id.in_(ids or [-1]))
        )
    )
    if not own:
        return render_customer_detail(
            session, customer, form, gettext("Tick the assignments to end first."), status=400
        )
    try:
        count = assignment.unassign(own, actor=actor_name(), end=form.end.data)
    except assignment.GateError as exc:
        return render_customer_detail(session, customer, form, gate_words(exc), status=409)
    except assignment.AssignmentError as exc:
        message = gettext("Nothing was unassigned: %(why)s. Reload the page and try again.",
                          why=said(exc))
        return render_customer_detail(session, customer, form, message, status=400)
    flash(ngettext("Ended %(num)s assignment of %(customer)s; its history is kept.",
                   "Ended %(num)s assignments of %(customer)s; their history is kept.",
                   count, customer=customer.company))
    return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
