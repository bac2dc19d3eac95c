"""Background batches for the pages: a small in-process executor that runs validate/sync batches
outside the request, and the batch progress page (HTML with refresh, and JSON for the script)."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from flask import Flask, abort, current_app, jsonify, render_template, url_for
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from ...i18n import N_, Words, ngettext
from ...models import Batch, Problem, Run, Server, utcnow
from ...sqlite import writes
from ...state import get_state
from ..access import actor_name

log = logging.getLogger("lm_billing_plugin.views.runs")

# A run's status as the operator reads it (the pages show these, never the codes).
RUN_STATUS_WORDS = Words({
    "queued": N_("waiting"),
    "running": N_("running"),
    "ok": N_("ok"),
    "problems": N_("errors found"),
    "failed": N_("failed"),
    "interrupted": N_("interrupted"),
    "skipped": N_("skipped"),
})

EXECUTOR_KEY = "pages.executor"
FUTURES_KEY = "pages.futures"
_LOCK = threading.Lock()
# Batches run one or two at a time here: each one already validates its servers in parallel
# (LM_BILLING_MAX_PARALLEL), so more workers would only compete for the same database.
WORKERS = 2


def _executor(app: Flask) -> ThreadPoolExecutor:
    extras = get_state(app).extras
    with _LOCK:
        executor = extras.get(EXECUTOR_KEY)
        if executor is None:
            executor = ThreadPoolExecutor(
                max_workers=WORKERS, thread_name_prefix="lm-billing-batch"
            )
            # Idle workers of every app go at exit, even when the host never calls
            # billing.shutdown(app); a batch still running is then left to the stale sweep.
            atexit.register(executor.shutdown, wait=False, cancel_futures=True)
            extras[EXECUTOR_KEY] = executor
            extras[FUTURES_KEY] = []
        assert isinstance(executor, ThreadPoolExecutor)
        return executor


def _run_in_app(app: Flask, batch_id: int) -> None:
    from ...engine import batch_process

    with app.app_context(), writes():
        try:
            batch_process.run_queued(batch_id)
        except Exception:
            # The batch row keeps the failure (the runner records its runs); the page shows it.
            log.exception("background batch %s failed", batch_id)
            _mark_failed(batch_id)
        finally:
            # The worker thread's scoped session goes with it.
            get_state(app).remove_session()


def _mark_failed(batch_id: int) -> None:
    from ...models import utcnow

    session = get_state().session
    session.rollback()
    batch = session.get(Batch, batch_id)
    if batch is not None and batch.finished_at is None:
        batch.status = "failed"
        batch.finished_at = utcnow()
        session.commit()


def submit_background(work: Callable[[Flask], None]) -> None:
    """Run ``work(app)`` on the pages' background executor (batches and bill runs share it;
    wait_for_batches waits for both). ``work`` opens its own app context."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    if get_state(app).settings.inline_batches:
        # A host's test suite: the work is done when the request returns, no thread (``work``
        # runs in an app context of its own, so the request's session is untouched).
        work(app)
        return
    future = _executor(app).submit(work, app)
    with _LOCK:
        futures: list[Future[None]] = get_state(app).extras[FUTURES_KEY]
        futures[:] = [f for f in futures if not f.done()]
        futures.append(future)


def start_batch(kind: str, server_ids: list[int] | None, *, dry_run: bool = False) -> int:
    """Create the batch now (so the page has something to show) and run it in the background;
    ``dry_run`` (sync only) is the CLI's ``sync --dry-run``: it writes nothing but the runs."""
    from ...engine import batches

    batch_id = int(batches.create_batch(kind, server_ids, actor=actor_name(), dry_run=dry_run))
    submit_background(lambda app: _run_in_app(app, batch_id))
    return batch_id


def wait_for_batches(app: Flask, timeout: float | None = 30.0) -> None:
    """Block until the batches started so far have finished (for tests and CLI-less shutdown)."""
    with _LOCK:
        futures = list(get_state(app).extras.get(FUTURES_KEY, []))
    for future in futures:
        future.result(timeout=timeout)


def shutdown_executor(app: Flask, *, wait: bool = True) -> None:
    """Stop the background executor of ``app`` (tests call it so no thread outlives them)."""
    with _LOCK:
        executor = get_state(app).extras.pop(EXECUTOR_KEY, None)
        get_state(app).extras.pop(FUTURES_KEY, None)
    if executor is not None:
        atexit.unregister(executor.shutdown)
        executor.shutdown(wait=wait, cancel_futures=not wait)


def _batch_or_404(batch_id: int) -> Batch:
    batch = get_state().session.get(Batch, batch_id)
    if batch is None:
        abort(404)
    return batch


def _progress_sentence(batch: Batch, finished: bool) -> str:
    """"Running: 3 of 10 servers done, 1 failed." as one translatable sentence: the page
    shows it and its script puts the JSON's copy in place while the batch runs."""
    done, total, failed = batch.done, batch.total, batch.failed
    if finished and failed:
        return ngettext("Finished: %(done)s of %(num)s server done, %(failed)s failed.",
                        "Finished: %(done)s of %(num)s servers done, %(failed)s failed.",
                        total, done=done, failed=failed)
    if finished:
        return ngettext("Finished: %(done)s of %(num)s server done.",
                        "Finished: %(done)s of %(num)s servers done.", total, done=done)
    if failed:
        return ngettext("Running: %(done)s of %(num)s server done, %(failed)s failed.",
                        "Running: %(done)s of %(num)s servers done, %(failed)s failed.",
                        total, done=done, failed=failed)
    return ngettext("Running: %(done)s of %(num)s server done.",
                    "Running: %(done)s of %(num)s servers done.", total, done=done)


def _progress(batch: Batch) -> dict[str, Any]:
    session = get_state().session
    runs = session.execute(
        select(Run, Server.name)
        .join(Server, Server.id == Run.server_id)
        .where(Run.batch_id == batch.id)
        .order_by(Server.name, Run.id)
    ).all()
    # queued -> running -> finished (or failed); anything else is still on its way.
    finished = batch.finished_at is not None or batch.status in ("finished", "failed")
    # A batch whose process died never finishes by itself (the next batch closes it). Say
    # so instead of refreshing forever; nothing is written on this GET.
    moments = [batch.started_at]
    for run, _name in runs:
        moments += [t for t in (run.started_at, run.finished_at) if t is not None]
    stalled = not finished and utcnow() - max(moments) > timedelta(
        seconds=get_state().settings.lease_seconds
    )
    open_problems = batch_problems = 0
    if finished:
        open_problems = int(
            session.scalar(
                select(func.count()).select_from(Problem).where(Problem.status == "open")
            )
            or 0
        )
        # The Errors page's ?batch= filter shows the same rows.
        from .problems import found_by_batch

        batch_problems = int(
            session.scalar(
                select(func.count())
                .select_from(Problem)
                .where(Problem.status == "open", found_by_batch(batch.id))
            )
            or 0
        )
    return {
        "runs": runs,
        "progress_text": _progress_sentence(batch, finished),
        "finished": finished,
        "stalled": stalled,
        "open_problems": open_problems,
        "batch_problems": batch_problems,
    }


def batch(batch_id: int) -> str:
    record = _batch_or_404(batch_id)
    return render_template("lm_billing/batch.html", batch=record, **_progress(record))


def batch_json(batch_id: int) -> Response:
    record = _batch_or_404(batch_id)
    progress = _progress(record)
    return jsonify(
        {
            "id": record.id,
            "kind": record.kind,
            "status": record.status,
            "total": record.total,
            "done": record.done,
            "failed": record.failed,
            "finished": progress["finished"],
            "open_problems": progress["open_problems"],
            "batch_problems": progress["batch_problems"],
            "progress_text": progress["progress_text"],
            "url": url_for("lm_billing.batch", batch_id=record.id),
        }
    )
