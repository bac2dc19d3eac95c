"""Customers, billing groups and hosting plans: list, create and edit them, and assign a
server's lists, sites or the whole server to a billing group through the engine's gate."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response
from wtforms import SelectChoice

from .. import audit
from ..access import actor_name, requires
from ..extension import get_state
from ..forms_catalog import AssignForm, CustomerForm, GroupForm, PlanForm, UnassignForm
from ..models import (
    Assignment,
    BillingGroup,
    Customer,
    HostingPlan,
    MailingList,
    Server,
    Site,
)
from ..store import active_assignment, is_conflict
from .paging import MAX_ID, MAX_SEARCH, Page, clamp, order_by, page_from_request

log = logging.getLogger("lm_billing_plugin.views.catalog")

CUSTOMER_FIELDS = ("company", "contact_name", "email", "is_active", "payment_method", "notes")
PLAN_FIELDS = (
    "name",
    "description",
    "max_members",
    "max_members_per_list",
    "max_lists",
    "max_lists_per_site",
    "max_sites",
    "bill_by_list",
    "billing_method",
    "monthly_price",
    "overage_cpm",
    "included_messages",
    "max_message_size_kb",
    "monthly_price_per_server",
    "cost_per_gb",
    "included_gb",
)
GROUP_FIELDS = ("name", "plan_id", "plan_start", "plan_end")


def _session() -> Session:
    return get_state().session


def _page_size() -> int:
    return get_state().settings.page_size


def _today() -> date:
    return datetime.now(UTC).date()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _apply(obj: Any, form: Any, names: Iterable[str]) -> dict[str, list[Any]]:
    """Copy the form's fields onto the row; return what changed as {field: [old, new]}."""
    changes: dict[str, list[Any]] = {}
    for name in names:
        new = getattr(form, name).data
        if name == "plan_id" and new == 0:
            new = None
        old = getattr(obj, name, None)
        if old != new:
            changes[name] = [_jsonable(old), _jsonable(new)]
            setattr(obj, name, new)
    return changes


def _search(column: Any, text: str) -> Any:
    # lower() on both sides: MariaDB's binary name collation would make LIKE case-sensitive.
    return sa.func.lower(column).contains(text.lower(), autoescape=True)


# --- Customers --------------------------------------------------------------------------

CUSTOMER_SORTS: dict[str, Any] = {
    "company": Customer.company,
    "contact": Customer.contact_name,
    "email": Customer.email,
    "active": Customer.is_active,
}


def customers() -> str:
    session = _session()
    q = request.args.get("q", "").strip()[:MAX_SEARCH]
    show = request.args.get("show", "active")
    if show not in ("active", "inactive", "all"):
        show = "active"
    page = page_from_request(
        "lm_billing.customers",
        CUSTOMER_SORTS,
        default_sort="company",
        size=_page_size(),
        keep={"q": q, "show": show},
    )
    where: list[Any] = []
    if q:
        where.append(
            sa.or_(
                _search(Customer.company, q),
                _search(Customer.contact_name, q),
                _search(Customer.email, q),
            )
        )
    if show != "all":
        where.append(Customer.is_active.is_(show == "active"))
    page.total = session.scalar(sa.select(sa.func.count()).select_from(Customer).where(*where)) or 0
    clamp(page)
    group_count = (
        sa.select(sa.func.count(BillingGroup.id))
        .where(BillingGroup.customer_id == Customer.id)
        .scalar_subquery()
    )
    rows = session.execute(
        sa.select(Customer, group_count)
        .where(*where)
        .order_by(*order_by(page, CUSTOMER_SORTS, Customer.id))
        .offset(page.offset)
        .limit(page.size)
    ).all()
    return render_template("lm_billing/customers.html", rows=rows, page=page, q=q, show=show)


def _customer_or_404(session: Session, customer_id: int) -> Customer:
    customer = session.get(Customer, customer_id)
    if customer is None:
        abort(404, description="No such customer: it may have been removed. Go back to Customers.")
    return customer


@requires("edit")
def customer_new() -> str | Response:
    form = CustomerForm()
    if form.validate_on_submit():
        session = _session()
        customer = Customer()
        changes = _apply(customer, form, CUSTOMER_FIELDS)
        session.add(customer)
        session.flush()
        audit.record(
            session,
            actor=actor_name(),
            action="customer_create",
            object_type="customer",
            object_id=customer.id,
            detail=changes,
        )
        session.commit()
        flash(f"Customer {customer.company} created. Add a billing group for its contract.")
        return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
    return render_template("lm_billing/customer_form.html", form=form, customer=None)


@requires("edit")
def customer_edit(customer_id: int) -> str | Response:
    session = _session()
    customer = _customer_or_404(session, customer_id)
    form = CustomerForm(obj=customer)
    if form.validate_on_submit():
        changes = _apply(customer, form, CUSTOMER_FIELDS)
        if changes:
            action = "customer_update"
            if "is_active" in changes:
                action = "customer_activate" if customer.is_active else "customer_deactivate"
            audit.record(
                session,
                actor=actor_name(),
                action=action,
                object_type="customer",
                object_id=customer.id,
                detail=changes,
            )
            session.commit()
            if action == "customer_deactivate":
                flash(f"Customer {customer.company} deactivated; their billing history is kept.")
            else:
                flash(f"Customer {customer.company} saved.")
        else:
            flash("Nothing changed.")
        return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
    return render_template("lm_billing/customer_form.html", form=form, customer=customer)


# --- What a group pays for ---------------------------------------------------------------


@dataclass
class GroupTotals:
    """What a billing group holds right now, to compare with its hosting plan's limits."""

    lists: int = 0
    members: int = 0
    sites: int = 0
    max_members_in_a_list: int = 0
    max_lists_in_a_site: int = 0
    list_ids: set[int] = field(default_factory=set)

    def checks(self, plan: HostingPlan | None) -> list[tuple[str, int, int, bool]]:
        """(label, value, limit, over) per plan limit; limit 0 = unlimited, never over."""
        if plan is None:
            return []
        # Bill by List: the limits apply to each list, so the biggest list is what counts.
        members = self.max_members_in_a_list if plan.bill_by_list else self.members
        rows = [
            ("Lists", self.lists, plan.max_lists),
            ("Members", members, plan.max_members),
            ("Members in the largest list", self.max_members_in_a_list, plan.max_members_per_list),
            ("Lists in the fullest site", self.max_lists_in_a_site, plan.max_lists_per_site),
            ("Sites", self.sites, plan.max_sites),
        ]
        return [(label, value, limit, limit > 0 and value > limit) for label, value, limit in rows]


def _active_assignment(today: date) -> Any:
    # The engine's rule, so pages and billing agree on who pays today (end date exclusive).
    return active_assignment(Assignment.__table__, today)


def group_totals(session: Session, group_ids: Iterable[int]) -> dict[int, GroupTotals]:
    """Lists, members and sites each group pays for today (directly, through a site or a
    whole server), in one query over all the groups."""
    ids = list(group_ids)
    totals = {gid: GroupTotals() for gid in ids}
    if not ids:
        return totals
    today = _today()
    columns = (
        Assignment.group_id,
        MailingList.id,
        MailingList.server_id,
        MailingList.site_name,
        MailingList.members,
    )
    where = (
        Assignment.group_id.in_(ids),
        _active_assignment(today),
        MailingList.status == "active",
    )
    # Three plain joins instead of one OR-join, so each uses its index (a group with
    # thousands of single lists must not compare every assignment with every list).
    whole_servers = (
        sa.select(*columns)
        .join(MailingList, MailingList.server_id == Assignment.server_id)
        .where(Assignment.object_type == "server", *where)
    )
    whole_sites = (
        sa.select(*columns)
        .join(Site, Site.id == Assignment.site_id)
        .join(
            MailingList,
            sa.and_(MailingList.server_id == Site.server_id, MailingList.site_name == Site.name),
        )
        .where(Assignment.object_type == "site", *where)
    )
    single_lists = (
        sa.select(*columns)
        .join(MailingList, MailingList.id == Assignment.list_id)
        .where(Assignment.object_type == "list", *where)
    )
    rows = session.execute(sa.union_all(whole_servers, whole_sites, single_lists)).all()
    per_site: dict[int, dict[tuple[int, str], int]] = {gid: {} for gid in ids}
    for group_id, list_id, server_id, site_name, members in rows:
        t = totals[group_id]
        if list_id in t.list_ids:
            continue  # a list covered twice (e.g. by its site and directly) counts once
        t.list_ids.add(list_id)
        t.lists += 1
        t.members += members
        t.max_members_in_a_list = max(t.max_members_in_a_list, members)
        if site_name:
            key = (server_id, site_name)
            per_site[group_id][key] = per_site[group_id].get(key, 0) + 1
    # Sites assigned on their own count even while they hold no lists.
    site_rows = session.execute(
        sa.select(Assignment.group_id, Site.server_id, Site.name)
        .join(Site, Site.id == Assignment.site_id)
        .where(Assignment.group_id.in_(ids), _active_assignment(today))
    ).all()
    for group_id, server_id, name in site_rows:
        per_site[group_id].setdefault((server_id, name), 0)
    for gid, sites in per_site.items():
        totals[gid].sites = len(sites)
        totals[gid].max_lists_in_a_site = max(sites.values(), default=0)
    return totals


ASSIGNMENT_SORTS: dict[str, Any] = {
    "group": BillingGroup.name,
    "server": Server.name,
    "start": Assignment.start_date,
}


def customer_detail(customer_id: int) -> Any:
    session = _session()
    customer = _customer_or_404(session, customer_id)
    return _render_customer_detail(session, customer, UnassignForm(customer_id=str(customer.id)))


def _render_customer_detail(
    session: Session,
    customer: Customer,
    unassign_form: UnassignForm,
    unassign_error: str = "",
    status: int = 200,
) -> Any:
    groups = session.execute(
        sa.select(BillingGroup, HostingPlan)
        .outerjoin(HostingPlan, HostingPlan.id == BillingGroup.plan_id)
        .where(BillingGroup.customer_id == customer.id)
        .order_by(BillingGroup.name, BillingGroup.id)
    ).all()
    totals = group_totals(session, [g.id for g, _ in groups])
    show_ended = request.args.get("ended") == "1"
    page = page_from_request(
        "lm_billing.customer_detail",
        ASSIGNMENT_SORTS,
        default_sort="group",
        size=_page_size(),
        keep={"ended": "1" if show_ended else ""},
        view_args={"customer_id": customer.id},
    )
    today = _today()
    where: list[Any] = [BillingGroup.customer_id == customer.id]
    if not show_ended:
        where.append(sa.or_(Assignment.end_date.is_(None), Assignment.end_date > today))
    base = sa.select(Assignment).join(BillingGroup, BillingGroup.id == Assignment.group_id)
    page.total = (
        session.scalar(sa.select(sa.func.count()).select_from(base.where(*where).subquery())) or 0
    )
    clamp(page)
    assignments = session.execute(
        sa.select(Assignment, BillingGroup.name, Server.name, Site.name, MailingList.name)
        .join(BillingGroup, BillingGroup.id == Assignment.group_id)
        .join(Server, Server.id == Assignment.server_id)
        .outerjoin(Site, Site.id == Assignment.site_id)
        .outerjoin(MailingList, MailingList.id == Assignment.list_id)
        .where(*where)
        .order_by(*order_by(page, ASSIGNMENT_SORTS, Assignment.id))
        .offset(page.offset)
        .limit(page.size)
    ).all()
    body = render_template(
        "lm_billing/customer_detail.html",
        customer=customer,
        groups=groups,
        totals=totals,
        assignments=assignments,
        page=page,
        show_ended=show_ended,
        today=today,
        form=unassign_form,
        unassign_error=unassign_error,
    )
    return (body, status) if status != 200 else body


# --- Billing groups -----------------------------------------------------------------------


def _plan_choices(session: Session) -> list[Any]:
    plans = session.execute(sa.select(HostingPlan.id, HostingPlan.name).order_by(HostingPlan.name))
    return [SelectChoice(0, "— no plan yet —"), *(SelectChoice(pid, name) for pid, name in plans)]


@requires("edit")
def group_new(customer_id: int) -> str | Response:
    session = _session()
    customer = _customer_or_404(session, customer_id)
    form = GroupForm()
    form.plan_id.choices = _plan_choices(session)
    if form.validate_on_submit():
        group = BillingGroup(customer_id=customer.id)
        changes = _apply(group, form, GROUP_FIELDS)
        session.add(group)
        session.flush()
        audit.record(
            session,
            actor=actor_name(),
            action="group_create",
            object_type="group",
            object_id=group.id,
            detail={"customer_id": customer.id, **changes},
        )
        session.commit()
        flash(
            f"Billing group {group.name} created. Assign the lists, sites or servers it pays for."
        )
        return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
    return render_template("lm_billing/group_form.html", form=form, customer=customer, group=None)


@requires("edit")
def group_edit(group_id: int) -> str | Response:
    session = _session()
    group = session.get(BillingGroup, group_id)
    if group is None:
        abort(404, description="No such billing group. Go back to the customer's page.")
    customer = _customer_or_404(session, group.customer_id)
    form = GroupForm(obj=group)
    form.plan_id.choices = _plan_choices(session)
    if not form.is_submitted():
        form.plan_id.data = group.plan_id or 0  # "no plan" is choice 0, stored as NULL
    if form.validate_on_submit():
        changes = _apply(group, form, GROUP_FIELDS)
        if changes:
            audit.record(
                session,
                actor=actor_name(),
                action="group_update",
                object_type="group",
                object_id=group.id,
                detail=changes,
            )
            session.commit()
            flash(f"Billing group {group.name} saved.")
        else:
            flash("Nothing changed.")
        return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
    return render_template("lm_billing/group_form.html", form=form, customer=customer, group=group)


# --- Hosting plans ------------------------------------------------------------------------

PLAN_SORTS: dict[str, Any] = {
    "name": HostingPlan.name,
    "method": HostingPlan.billing_method,
    "price": HostingPlan.monthly_price,
}


def plans() -> str:
    session = _session()
    page = page_from_request("lm_billing.plans", PLAN_SORTS, default_sort="name", size=_page_size())
    page.total = session.scalar(sa.select(sa.func.count()).select_from(HostingPlan)) or 0
    clamp(page)
    in_use = (
        sa.select(sa.func.count(BillingGroup.id))
        .where(BillingGroup.plan_id == HostingPlan.id)
        .scalar_subquery()
    )
    rows = session.execute(
        sa.select(HostingPlan, in_use)
        .order_by(*order_by(page, PLAN_SORTS, HostingPlan.id))
        .offset(page.offset)
        .limit(page.size)
    ).all()
    return render_template("lm_billing/plans.html", rows=rows, page=page)


def _plan_name_taken(session: Session, name: str, plan_id: int | None) -> bool:
    # Case-insensitive: MariaDB's default collation would refuse "gold" next to "Gold"
    # anyway, and two plans differing only in case confuse people everywhere.
    query = sa.select(HostingPlan.id).where(sa.func.lower(HostingPlan.name) == name.lower())
    if plan_id is not None:
        query = query.where(HostingPlan.id != plan_id)
    return session.scalar(query.limit(1)) is not None


def _save_plan(form: PlanForm, plan: HostingPlan | None) -> Response | None:
    session = _session()
    if not form.validate_on_submit():
        return None
    if _plan_name_taken(session, form.name.data or "", plan.id if plan else None):
        form.name.errors = [
            *form.name.errors,
            "A hosting plan with this name exists: choose another name.",
        ]
        return None
    creating = plan is None
    target = plan if plan is not None else HostingPlan()
    changes = _apply(target, form, PLAN_FIELDS)
    if creating:
        session.add(target)
    if not changes:
        flash("Nothing changed.")
        return redirect(url_for("lm_billing.plans"))
    try:
        session.flush()
        audit.record(
            session,
            actor=actor_name(),
            action="plan_create" if creating else "plan_update",
            object_type="plan",
            object_id=target.id,
            detail=changes,
        )
        session.commit()
    except sa.exc.DBAPIError as exc:
        # Someone saved a plan of this name between our check and our write.
        session.rollback()
        if not is_conflict(exc):
            raise
        form.name.errors = [
            *form.name.errors,
            "A hosting plan with this name was saved a moment ago: choose another name.",
        ]
        return None
    flash(f"Hosting plan {target.name} {'created' if creating else 'saved'}.")
    return redirect(url_for("lm_billing.plans"))


@requires("edit")
def plan_new() -> str | Response:
    form = PlanForm()
    done = _save_plan(form, None)
    return done or render_template("lm_billing/plan_form.html", form=form, plan=None)


@requires("edit")
def plan_edit(plan_id: int) -> str | Response:
    plan = _session().get(HostingPlan, plan_id)
    if plan is None:
        abort(404, description="No such hosting plan. Go back to Hosting Plans.")
    form = PlanForm(obj=plan)
    done = _save_plan(form, plan)
    return done or render_template("lm_billing/plan_form.html", form=form, plan=plan)


# --- Assignment ----------------------------------------------------------------------------


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
            _active_assignment(_today()),
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
    session = _session()
    form = AssignForm()
    form.group_id.choices = [
        SelectChoice(0, "— choose a billing group —"),
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
            form.server_id.errors = ["Choose a server first."]
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
    from .. import runner

    group = session.get(BillingGroup, form.group_id.data)
    if group is None:
        form.group_id.errors = ["Choose a billing group."]
        return ""
    whole = bool(form.whole_server.data)
    if not whole and not list_ids and not site_ids:
        form.whole_server.errors = [
            "Tick the lists or sites to assign, or tick Assign the whole server."
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
            f"Some ticked lists or sites are not on server {server.name} (any more): "
            "reload the page and tick them again."
        ]
        return ""
    try:
        count = runner.assign(
            group.id,
            server_id=server.id,
            site_ids=sorted(site_ids),
            list_ids=sorted(list_ids),
            whole_server=whole,
            actor=actor_name(),
            start=form.start.data,
        )
    except runner.GateError as exc:
        from lm_billing_plugin.problem_summary import gate_words

        return gate_words(exc)
    except runner.AssignmentError as exc:
        form.whole_server.errors = [f"Nothing was assigned: {exc}."]
        return ""
    flash(f"Assigned {count} object(s) on server {server.name} to billing group {group.name}.")
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
            "lm_billing.assign", LIST_SORTS, default_sort="name", size=_page_size(), keep=keep
        )
        where: list[Any] = [MailingList.server_id == server.id, MailingList.status == "active"]
        if q:
            where.append(sa.or_(_search(MailingList.name, q), _search(MailingList.site_name, q)))
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
    from .. import runner

    session = _session()
    form = UnassignForm()
    customer_ids = _int_args([request.form.get("customer_id", "")])
    customer = session.get(Customer, customer_ids[0]) if customer_ids else None
    if customer is None:
        abort(400, description="Unassign from a customer's page: reload it and try again.")
    ids = _int_args(request.form.getlist("assignment_id"))
    if not form.validate_on_submit():
        return _render_customer_detail(session, customer, form, status=400)
    # Only this customer's assignments: a forged id of another customer must not end theirs.
    own = list(
        session.scalars(
            sa.select(Assignment.id)
            .join(BillingGroup, BillingGroup.id == Assignment.group_id)
            .where(BillingGroup.customer_id == customer.id, Assignment.id.in_(ids or [-1]))
        )
    )
    if not own:
        return _render_customer_detail(
            session, customer, form, "Tick the assignments to end first.", status=400
        )
    try:
        count = runner.unassign(own, actor=actor_name(), end=form.end.data)
    except runner.GateError as exc:
        from lm_billing_plugin.problem_summary import gate_words

        return _render_customer_detail(session, customer, form, gate_words(exc), status=409)
    except runner.AssignmentError as exc:
        message = f"Nothing was unassigned: {exc}. Reload the page and try again."
        return _render_customer_detail(session, customer, form, message, status=400)
    flash(f"Ended {count} assignment(s) of {customer.company}; their history is kept.")
    return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))


def register(blueprint: Blueprint) -> None:
    rules: list[tuple[str, str, Any, list[str]]] = [
        ("/customers", "customers", customers, ["GET"]),
        ("/customers/new", "customer_new", customer_new, ["GET", "POST"]),
        ("/customers/<int:customer_id>", "customer_detail", customer_detail, ["GET"]),
        ("/customers/<int:customer_id>/edit", "customer_edit", customer_edit, ["GET", "POST"]),
        ("/customers/<int:customer_id>/groups/new", "group_new", group_new, ["GET", "POST"]),
        ("/groups/<int:group_id>/edit", "group_edit", group_edit, ["GET", "POST"]),
        ("/plans", "plans", plans, ["GET"]),
        ("/plans/new", "plan_new", plan_new, ["GET", "POST"]),
        ("/plans/<int:plan_id>/edit", "plan_edit", plan_edit, ["GET", "POST"]),
        ("/assign", "assign", assign, ["GET", "POST"]),
        ("/unassign", "unassign", unassign, ["POST"]),
    ]
    for rule, endpoint, view, methods in rules:
        blueprint.add_url_rule(rule, endpoint, view, methods=methods)
