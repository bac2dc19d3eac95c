"""The Customers pages: list, create, edit and show customers, with their billing groups
(create, edit) and what each group holds now."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response
from wtforms import SelectChoice

from ...billing.invoice_templates import template_choices
from ...catalog.customers import CatalogError, create_customer, update_customer
from ...catalog.groups import GROUP_FIELDS, create_group, update_group
from ...engine.versions import ChangedMeanwhile, fields_version
from ...i18n import N_, Words, gettext
from ...models import (
    Assignment,
    AuditEntry,
    BillingGroup,
    Customer,
    HostingPlan,
    Invoice,
    MailingList,
    Server,
    Site,
)
from ..access import actor_name, requires
from ..forms.audit import ACTION_WORDS
from ..forms.catalog import CustomerForm, GroupForm, UnassignForm
from ..forms.versioned import posted_version
from .catalog import (
    CUSTOMER_FIELDS as FORM_CUSTOMER_FIELDS,
)
from .catalog import (
    ZERO_IS_NONE,
    active_assignment_clause,
    billing_day,
    counted_page,
    db_session,
    field_error,
    page_size,
    search_clause,
)
from .paging import MAX_SEARCH, clamp, order_by, page_from_request

CUSTOMER_SORTS: dict[str, Any] = {
    "company": Customer.company,
    "contact": Customer.contact_name,
    "email": Customer.email,
    "active": Customer.is_active,
}


# The History table: the audit log's action names and detail keys, as the page says them
# (an action or key not listed here is shown as stored).
HISTORY_ACTION_WORDS: Final = Words(ACTION_WORDS)  # the Audit log page's words
HISTORY_DETAIL_WORDS: Final = Words({
    "assignment_ids": N_("assignments"),
    "customer_id": N_("customer"),
    "end": N_("end"),
    "start": N_("start"),
    "invoice": N_("invoice"),
    "invoice_id": N_("invoice id"),
    "plan_id": N_("plan id"),
    "site_ids": N_("sites"),
    "whole_server": N_("whole server"),
    "to": N_("to"),
    "refused": N_("refused"),
    "group_id": N_("group"),
    "server_id": N_("server"),
    "list_ids": N_("lists"),
    "reason": N_("reason"),
    "changes": N_("changes"),
    "assigned": N_("assigned"),
    "number": N_("number"),
    "amount": N_("amount"),
    "total": N_("total"),
})


def customers() -> str:
    q = request.args.get("q", "").strip()[:MAX_SEARCH]
    show = request.args.get("show", "active")
    if show not in ("active", "inactive", "all"):
        show = "active"
    page = page_from_request(
        "lm_billing.customers",
        CUSTOMER_SORTS,
        default_sort="company",
        size=page_size(),
        keep={"q": q, "show": show},
    )
    where: list[Any] = []
    if q:
        where.append(
            sa.or_(
                search_clause(Customer.company, q),
                search_clause(Customer.contact_name, q),
                search_clause(Customer.email, q),
            )
        )
    if show != "all":
        where.append(Customer.is_active.is_(show == "active"))
    rows = counted_page(page, Customer, CUSTOMER_SORTS, BillingGroup.id,
                        BillingGroup.customer_id == Customer.id, where)
    return render_template("lm_billing/customers.html", rows=rows, page=page, q=q, show=show)


def _customer_or_404(session: Session, customer_id: int) -> Customer:
    customer = session.get(Customer, customer_id)
    if customer is None:
        abort(404, description=N_(
            "No such customer: it may have been removed. Go back to Customers."))
    return customer


def _customer_form(session: Session, customer: Customer | None, *, fresh: bool = False
                   ) -> CustomerForm:
    """The customer's form: as posted, or (``fresh``, after a refused save) as stored."""
    form = CustomerForm(formdata=None, obj=customer) if fresh else CustomerForm(obj=customer)
    form.email_template_id.choices = template_choices(session, "email")
    form.web_template_id.choices = template_choices(session, "web")
    # Not posted (a script's form) or not set yet: the stored choice, else the default (0).
    for name in ("email_template_id", "web_template_id"):
        field = getattr(form, name)
        if field.data is None or not form.is_submitted():
            field.data = (getattr(customer, name) if customer else None) or 0
    return form


@requires("edit")
def customer_new() -> str | Response:
    form = _customer_form(db_session(), None)
    if form.validate_on_submit():
        try:
            customer = create_customer(_values(form, FORM_CUSTOMER_FIELDS), actor=actor_name())
        except CatalogError as exc:
            field_error(form, exc, "company")
        else:
            flash(gettext("Customer %(name)s created. Add a billing group for its contract.",
                          name=customer.company))
            return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
    return render_template("lm_billing/customer_form.html", form=form, customer=None)


@requires("edit")
def customer_edit(customer_id: int) -> str | Response:
    session = db_session()
    customer = _customer_or_404(session, customer_id)
    form = _customer_form(session, customer)
    if form.validate_on_submit():
        try:
            action, _changes = update_customer(
                customer, _values(form, FORM_CUSTOMER_FIELDS), actor=actor_name(),
                expected_version=posted_version(form))
        except ChangedMeanwhile as exc:
            # Nothing was saved: the stored values and their version, to review and redo.
            customer = _customer_or_404(session, customer_id)
            form = _customer_form(session, customer, fresh=True)
            form.loaded_version.data = exc.current_version
            form.form_errors.append(str(exc))
            return render_template("lm_billing/customer_form.html", form=form,
                                   customer=customer)
        except CatalogError as exc:
            field_error(form, exc, "company")
            return render_template("lm_billing/customer_form.html", form=form,
                                   customer=customer)
        if action == "customer_deactivate":
            flash(gettext("Customer %(name)s deactivated; their billing history is kept.",
                          name=customer.company))
        elif action:
            flash(gettext("Customer %(name)s saved.", name=customer.company))
        else:
            flash(gettext("Nothing changed."))
        return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
    if not form.is_submitted():
        form.loaded_version.data = fields_version(customer, sorted(FORM_CUSTOMER_FIELDS))
    return render_template("lm_billing/customer_form.html", form=form, customer=customer)


def _values(form: Any, names: Iterable[str]) -> dict[str, Any]:
    values = {name: getattr(form, name).data for name in names}
    for name in ZERO_IS_NONE:
        if name in values and values[name] == 0:
            values[name] = None  # "none" is choice 0, stored as NULL
    return values


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
            (N_("Lists"), self.lists, plan.max_lists),
            (N_("Members"), members, plan.max_members),
            (N_("Members in the largest list"), self.max_members_in_a_list,
             plan.max_members_per_list),
            (N_("Lists in the fullest site"), self.max_lists_in_a_site, plan.max_lists_per_site),
            (N_("Sites"), self.sites, plan.max_sites),
        ]
        return [(label, value, limit, limit > 0 and value > limit) for label, value, limit in rows]


def group_totals(session: Session, group_ids: Iterable[int]) -> dict[int, GroupTotals]:
    """Lists, members and sites each group pays for today (directly, through a site or a
    whole server), in one query over all the groups."""
    ids = list(group_ids)
    totals = {gid: GroupTotals() for gid in ids}
    if not ids:
        return totals
    today = billing_day()
    columns = (
        Assignment.group_id,
        MailingList.id,
        MailingList.server_id,
        MailingList.site_name,
        MailingList.members,
    )
    where = (
        Assignment.group_id.in_(ids),
        active_assignment_clause(today),
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
        .where(Assignment.group_id.in_(ids), active_assignment_clause(today))
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
    session = db_session()
    customer = _customer_or_404(session, customer_id)
    return render_customer_detail(session, customer, UnassignForm(customer_id=str(customer.id)))


def render_customer_detail(
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
        size=page_size(),
        keep={"ended": "1" if show_ended else ""},
        view_args={"customer_id": customer.id},
    )
    today = billing_day()
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
    # Viewing a Customer's History: its invoices and the audit entries about it.
    invoices = list(session.scalars(
        sa.select(Invoice).where(Invoice.customer_id == customer.id)
        .order_by(Invoice.period_start.desc(), Invoice.id.desc()).limit(100)))
    history = list(session.scalars(
        sa.select(AuditEntry).where(AuditEntry.object_type == "customer",
                                    AuditEntry.object_id == customer.id)
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(100)))
    from ...billing.charges import group_charges
    from ..forms.charges import GroupChargeEndForm

    body = render_template(
        "lm_billing/customer_detail.html",
        invoices=invoices,
        history=history,
        history_action_words=HISTORY_ACTION_WORDS,
        history_detail_words=HISTORY_DETAIL_WORDS,
        group_charges=group_charges(session, [g.id for g, _ in groups]),
        charge_end_form=GroupChargeEndForm(),
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
    return [SelectChoice(0, gettext("— no plan yet —")),
            *(SelectChoice(pid, name) for pid, name in plans)]


@requires("edit")
def group_new(customer_id: int) -> str | Response:
    session = db_session()
    customer = _customer_or_404(session, customer_id)
    form = GroupForm()
    form.plan_id.choices = _plan_choices(session)
    if form.validate_on_submit():
        try:
            group = create_group(customer, _values(form, GROUP_FIELDS), actor=actor_name())
        except CatalogError as exc:
            field_error(form, exc, "name")
        else:
            flash(gettext("Billing group %(name)s created. Assign the lists, sites or servers "
                          "it pays for.", name=group.name))
            return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
    return render_template("lm_billing/group_form.html", form=form, customer=customer, group=None)


@requires("edit")
def group_edit(group_id: int) -> str | Response:
    session = db_session()
    group = session.get(BillingGroup, group_id)
    if group is None:
        abort(404, description=N_("No such billing group. Go back to the customer's page."))
    customer = _customer_or_404(session, group.customer_id)
    form = GroupForm(obj=group)
    form.plan_id.choices = _plan_choices(session)
    if not form.is_submitted():
        form.plan_id.data = group.plan_id or 0  # "no plan" is choice 0, stored as NULL
        form.loaded_version.data = fields_version(group, sorted(GROUP_FIELDS))
    if form.validate_on_submit():
        try:
            changes = update_group(group, _values(form, GROUP_FIELDS), actor=actor_name(),
                                   expected_version=posted_version(form))
        except ChangedMeanwhile as exc:
            # Nothing was saved: the stored values and their version, to review and redo.
            group = session.get(BillingGroup, group_id)
            if group is None:
                abort(404, description=N_("No such billing group. Go back to the customer's page."))
            form = GroupForm(formdata=None, obj=group)
            form.plan_id.choices = _plan_choices(session)
            form.plan_id.data = group.plan_id or 0
            form.loaded_version.data = exc.current_version
            form.form_errors.append(str(exc))
            return render_template("lm_billing/group_form.html", form=form, customer=customer,
                                   group=group)
        except CatalogError as exc:
            field_error(form, exc, "name")
            return render_template("lm_billing/group_form.html", form=form, customer=customer,
                                   group=group)
        flash(gettext("Billing group %(name)s saved.", name=group.name) if changes
              else gettext("Nothing changed."))
        return redirect(url_for("lm_billing.customer_detail", customer_id=customer.id))
    return render_template("lm_billing/group_form.html", form=form, customer=customer, group=group)


# --- Hosting plans ------------------------------------------------------------------------
