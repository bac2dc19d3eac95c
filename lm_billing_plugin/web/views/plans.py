"""The Hosting plans pages: list, create and edit plans; a name taken meanwhile by someone else
is a field error, not a 500."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, url_for
from werkzeug.wrappers import Response

from ...catalog.customers import CatalogError
from ...catalog.plans import save_plan
from ...engine.versions import ChangedMeanwhile, fields_version
from ...i18n import N_, gettext
from ...models import (
    BillingGroup,
    HostingPlan,
)
from ..access import actor_name, requires
from ..forms.catalog import PlanForm
from ..forms.versioned import posted_version
from .catalog import (
    PLAN_FIELDS,
    counted_page,
    db_session,
    field_error,
    page_size,
)
from .paging import page_from_request

PLAN_SORTS: dict[str, Any] = {
    "name": HostingPlan.name,
    "method": HostingPlan.billing_method,
    "price": HostingPlan.monthly_price,
}


def plans() -> str:
    page = page_from_request("lm_billing.plans", PLAN_SORTS, default_sort="name", size=page_size())
    rows = counted_page(page, HostingPlan, PLAN_SORTS, BillingGroup.id,
                        BillingGroup.plan_id == HostingPlan.id)
    return render_template("lm_billing/plans.html", rows=rows, page=page)


def _save_plan(form: PlanForm, plan: HostingPlan | None) -> Response | None:
    if not form.validate_on_submit():
        return None
    try:
        target, changes = save_plan(plan, {name: getattr(form, name).data
                                           for name in PLAN_FIELDS}, actor=actor_name(),
                                    expected_version=posted_version(form))
    except ChangedMeanwhile as exc:
        # Nothing was saved: show the stored values (the caller renders this form).
        if plan is not None:
            db_session().refresh(plan)
            form.process(formdata=None, obj=plan)
        form.loaded_version.data = exc.current_version
        form.form_errors.append(str(exc))
        return None
    except CatalogError as exc:
        field_error(form, exc, "name")
        return None
    if not changes:
        flash(gettext("Nothing changed."))
    else:
        flash(gettext("Hosting plan %(name)s created.", name=target.name) if plan is None
              else gettext("Hosting plan %(name)s saved.", name=target.name))
    return redirect(url_for("lm_billing.plans"))


@requires("edit")
def plan_new() -> str | Response:
    form = PlanForm()
    done = _save_plan(form, None)
    return done or render_template("lm_billing/plan_form.html", form=form, plan=None)


@requires("edit")
def plan_edit(plan_id: int) -> str | Response:
    plan = db_session().get(HostingPlan, plan_id)
    if plan is None:
        abort(404, description=N_("No such hosting plan. Go back to Hosting Plans."))
    form = PlanForm(obj=plan)
    if not form.is_submitted():
        form.loaded_version.data = fields_version(plan, sorted(PLAN_FIELDS))
    done = _save_plan(form, plan)
    return done or render_template("lm_billing/plan_form.html", form=form, plan=plan)


# --- Assignment ----------------------------------------------------------------------------
