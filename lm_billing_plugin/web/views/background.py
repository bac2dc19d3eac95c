"""Billing: Background validation — the schedule (next run, last run, the run going on now
with its progress), the history of scheduled runs, and "Run now"."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import current_app, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response

from ... import audit
from ...i18n import gettext
from ...models import TaskRun, TaskState
from ...schedule.claims import TASK, request_run_now, schedule_summary
from ...state import get_state
from ..access import actor_name, requires
from .paging import clamp, page_from_request

STATUS_WORDS = {
    "running": "running",
    "ok": "OK",
    "problems": "problems found",
    "failed": "failed",
    "interrupted": "interrupted",
    "skipped": "skipped",
}


class RunNowForm(FlaskForm):  # type: ignore[misc]
    """The "Run now" button: CSRF only."""


def background() -> str:
    state = get_state()
    session = state.session
    summary = schedule_summary(session, state.settings)
    sort_keys: dict[str, Any] = {"started": TaskRun.started_at}
    page = page_from_request(
        "lm_billing.background", sort_keys, default_sort="started", size=state.settings.page_size
    )
    # History reads newest first, always; only the page number comes from the query string.
    page.direction = "desc"
    base = sa.select(TaskRun).where(TaskRun.task == TASK)
    page.total = int(session.scalar(sa.select(sa.func.count()).select_from(base.subquery())) or 0)
    clamp(page)
    runs = session.scalars(
        base.order_by(TaskRun.started_at.desc(), TaskRun.id.desc())
        .limit(page.size)
        .offset(page.offset)
    ).all()
    problems_endpoint = "lm_billing.problems" in current_app.view_functions
    return render_template(
        "lm_billing/background.html",
        summary=summary,
        runs=runs,
        page=page,
        form=RunNowForm(),
        status_words=STATUS_WORDS,
        problems_url=_problems_url if problems_endpoint else None,
        duration=_duration,
    )


def _problems_url(run: TaskRun) -> str:
    # The Errors page filters open problems; ?batch= narrows them to this run's batch where
    # that page supports it.
    if run.batch_id is not None:
        return url_for("lm_billing.problems", batch=run.batch_id)
    return url_for("lm_billing.problems")


def _duration(run: TaskRun | float | None) -> str:
    """A run's duration (a finished run, or its seconds) in the largest sensible unit."""
    if isinstance(run, TaskRun):
        if run.finished_at is None:
            return ""
        run = (run.finished_at - run.started_at).total_seconds()
    if run is None:
        return ""
    seconds = run
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@requires("run")
def background_run_now() -> Response:
    form = RunNowForm()
    back = redirect(url_for("lm_billing.background"))
    if not form.validate_on_submit():
        flash(gettext('The form expired; reload the page and click "Run now" again.'), "error")
        return back
    state = get_state()
    session = state.session
    busy = session.scalar(sa.select(TaskState.lease_owner).where(TaskState.name == TASK))
    now = request_run_now(session)
    audit.record(
        session,
        actor=actor_name(),
        action="schedule_run_now",
        object_type="task",
        detail={"task": TASK, "next_run_at": now.isoformat()},
    )
    session.commit()
    if not state.settings.scheduler_enabled:
        flash(gettext(
            "The next run is due now, but scheduled validation is disabled "
            "(LM_BILLING_SCHEDULER_ENABLED is False), so nothing will run until it is enabled."),
            "error",
        )
    elif busy:
        flash(
            gettext("A scheduled run is going on now; the next one starts as soon as it ends."),
            "message",
        )
    else:
        flash(gettext(
            "The next scheduled run is due now: a scheduler process starts it within a "
            'second or two. This page shows it under "Running now".'),
            "message",
        )
    return back
