"""Invoice templates: the built-in and stored Email and Web Invoice Templates, edited with a
live preview against a real invoice (or a sample one) rendered in billing's sandbox."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response
from wtforms import SelectChoice

from ... import audit
from ...billing.invoice_templates import (
    KIND_LABELS,
    TemplateProblem,
    default_source,
    invoice_context,
    render_invoice,
    sample_context,
)
from ...catalog.names import DuplicateName, check_name, conflict_message
from ...engine.store import is_conflict
from ...i18n import N_, gettext
from ...models import Invoice, InvoiceTemplate
from ..access import actor_name, requires
from ..forms.charges import InvoiceTemplateForm
from ..said import said
from .catalog import db_session

PREVIEW_INVOICES = 50


def invoice_templates() -> str:
    session = db_session()
    rows = session.execute(
        sa.select(InvoiceTemplate).order_by(InvoiceTemplate.kind, InvoiceTemplate.name)
    ).scalars().all()
    return render_template("lm_billing/invoice_templates.html", rows=rows, kinds=KIND_LABELS)


def _preview_choices(session: Session) -> list[Any]:
    rows = session.execute(
        sa.select(Invoice.id, Invoice.number, Invoice.company)
        .order_by(Invoice.id.desc())
        .limit(PREVIEW_INVOICES)
    ).all()
    return [
        SelectChoice(0, gettext("A sample invoice")),
        *(SelectChoice(iid, gettext("Invoice %(number)s: %(company)s", number=number,
                                    company=company))
          for iid, number, company in rows),
    ]


def _preview(session: Session, kind: str, form: InvoiceTemplateForm) -> tuple[str, bool]:
    """(rendered text, ok); a problem goes next to the template field."""
    invoice = session.get(Invoice, form.preview_invoice.data) if form.preview_invoice.data else None
    context = invoice_context(session, invoice) if invoice else sample_context()
    try:
        return render_invoice(kind, context, source=form.body.data or ""), True
    except TemplateProblem as exc:
        form.body.errors = [*form.body.errors, _problem_words(exc)]
        return "", False


def _problem_words(exc: TemplateProblem) -> str:
    """The template's problem in the viewer's language, its line number kept: the English
    is ``str(exc)`` byte for byte ("Line 3: ..."), the prefix alone is too short for say()
    to find, so the line is put back here around the said message."""
    if not exc.lineno:
        return said(exc.message)
    return gettext("Line %(line)s: %(problem)s", line=exc.lineno, problem=said(exc.message))


def _edit(kind: str, template: InvoiceTemplate | None) -> Any:
    session = db_session()
    form = InvoiceTemplateForm(obj=template)
    form.preview_invoice.choices = _preview_choices(session)
    if not form.is_submitted():
        if template is None:
            form.body.data = default_source(kind)
        # A real invoice when there is one (the latest), else the sample.
        choices = form.preview_invoice.choices
        form.preview_invoice.data = choices[1].value if len(choices) > 1 else 0
    preview, ok = "", False
    saving = request.method == "POST" and "save" in request.form
    if form.validate_on_submit() or (request.method == "GET" and form.body.data):
        preview, ok = _preview(session, kind, form)
        if saving and ok:
            done = _save(session, kind, template, form)
            if done is not None:
                return done
    status = 400 if request.method == "POST" and form.errors else 200
    body = render_template(
        "lm_billing/invoice_template_form.html",
        form=form,
        template=template,
        kind=kind,
        kind_label=KIND_LABELS[kind],
        preview=preview,
    )
    return (body, status) if status != 200 else body


def _save(
    session: Session, kind: str, template: InvoiceTemplate | None, form: InvoiceTemplateForm
) -> Response | None:
    name = form.name.data or ""
    try:
        check_name(session, "template", name, exclude_id=template.id if template else None,
                   template_kind=kind)
    except DuplicateName as exc:
        form.name.errors = [*form.name.errors, said(exc)]
        return None
    creating = template is None
    target = template or InvoiceTemplate(kind=kind)
    changed = [k for k in ("name", "body") if getattr(target, k, None) != getattr(form, k).data]
    target.name = name
    target.body = form.body.data or ""
    target.updated_by = actor_name()
    if creating:
        session.add(target)
    try:
        session.flush()
        audit.record(session, actor=actor_name(),
                     action="template_create" if creating else "template_update",
                     object_type="template", object_id=target.id,
                     detail={"kind": kind, "name": name, "changed": changed,
                             "length": len(target.body)})
        session.commit()
    except sa.exc.DBAPIError as exc:
        session.rollback()
        if not is_conflict(exc):
            raise
        form.name.errors = [*form.name.errors, conflict_message("template")]
        return None
    flash(gettext("%(kind)s %(name)s saved. Choose it on a customer's page (Edit Customer).",
                  kind=KIND_LABELS[kind], name=name))
    return redirect(url_for("lm_billing.invoice_template_edit", template_id=target.id))


@requires("edit")
def invoice_template_new() -> Any:
    kind = request.args.get("kind", "email")
    if kind not in KIND_LABELS:
        abort(404, description=N_("Templates are of kind email or web."))
    return _edit(kind, None)


@requires("edit")
def invoice_template_edit(template_id: int) -> Any:
    template = db_session().get(InvoiceTemplate, template_id)
    if template is None:
        abort(404, description=N_("No such invoice template. Go back to Invoice Templates."))
    return _edit(template.kind, template)
