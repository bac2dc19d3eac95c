"""Batches in a process of their own (LM_BILLING_BATCH_PROCESS_APP).

A batch's work (decoding every server's inventory, comparing and storing it) is CPU-bound
Python. In a thread of a web worker it holds the interpreter lock the worker's page threads
need, so the pages of that worker slow down for as long as a validation runs (the load test
of issue 14 measured p95 up to 2.5x idle). In a process of its own the operating system shares
the cores between it and the web workers instead.

The batch is queued in the database first (:func:`~.batches.create_batch`, so the page has it
at once); the child is ``flask --app APP lm-billing run-batch ID``, whose
:func:`~.batches.run_batch` claims it (queued -> running, one UPDATE), so a batch runs once
however it is started. The child first checks that it opened the database that queued the
batch (:data:`DATABASE_ENV`): an app import string that builds a differently configured app
would otherwise run nothing, or the wrong batch.

If the child ends without handing back its result (it could not start, or it was killed), the
parent closes what is left of the batch at once: its unfinished runs fail with a message that
says what to do, and the servers they held are given back (no wait for the lease to expire).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

import sqlalchemy as sa

from ..models import utcnow
from ..sqlite import writing
from ..state import get_state
from .batches import BatchResult, run_batch
from .leases import end_unfinished_runs
from .store import BATCH, RUN, SERVER

__all__ = ["DATABASE_ENV", "BatchProcessError", "command", "database_identity",
           "run_in_process"]

log = logging.getLogger("lm_billing_plugin.engine.batch_process")

# The database of the process that queued the batch, as database_identity() writes it.
DATABASE_ENV: Final = "LM_BILLING_BATCH_DATABASE"
# How much of the child's output goes to the log when it fails.
OUTPUT_TAIL: Final = 4000
SAID_CHARS: Final = 400  # of the child's last line, in the error


class BatchProcessError(RuntimeError):
    """The batch process ended without a result; the message says why and what to do."""


def database_identity(engine: sa.Engine) -> str:
    """The database an engine opens, without its password (it goes in the child's
    environment and may be printed)."""
    return engine.url.render_as_string(hide_password=True)


def command(app_import: str, batch_id: int, record: Path, nice: int = 0) -> list[str]:
    """The child's command line: this interpreter's Flask CLI on the host app, under
    ``nice`` when there is one (so the start-up, ~1.5 s of imports, is at the lower priority
    too)."""
    cli = [sys.executable, "-m", "flask", "--app", app_import, "lm-billing", "run-batch",
           str(batch_id), "--record", str(record)]
    tool = shutil.which("nice") if nice else None
    return [tool, "-n", str(nice), *cli] if tool else cli


def run_queued(batch_id: int) -> BatchResult:
    """Run the queued batch ``batch_id`` where the settings say: in a process of its own
    when LM_BILLING_BATCH_PROCESS_APP names the host app, else in this thread (what the
    pages, the API and the scheduler call). Needs an app context."""
    if get_state().settings.batch_process_app:
        # This thread only waits for the batch's own process.
        return run_in_process(batch_id)
    return run_batch(batch_id)


def run_in_process(batch_id: int) -> BatchResult:
    """Run the queued batch ``batch_id`` in a child process, wait for it and return its
    result (as :func:`~.batches.run_batch` would). Needs an app context; raises
    :class:`BatchProcessError` after closing the batch when the child gives no result."""
    state = get_state()
    app_import = state.settings.batch_process_app
    if not app_import:
        raise BatchProcessError("LM_BILLING_BATCH_PROCESS_APP is not set")
    state.session.commit()  # nothing of the caller's stays open while the child works
    env = {**os.environ, DATABASE_ENV: database_identity(state.db.engine)}
    with tempfile.TemporaryDirectory(prefix="lm-billing-batch-") as folder:
        record = Path(folder) / "result.json"
        output = Path(folder) / "output.txt"
        with output.open("wb") as out:
            code = subprocess.call(  # noqa: S603 - our own interpreter, fixed arguments, no shell
                command(app_import, batch_id, record, state.settings.batch_process_nice),
                env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT)
        if record.exists():
            return BatchResult.from_record(json.loads(record.read_text(encoding="utf-8")))
        with output.open("rb") as out:
            out.seek(max(0, output.stat().st_size - OUTPUT_TAIL))
            tail = out.read().decode("utf-8", "replace")
    log.error("batch %s: its process (flask --app %s lm-billing run-batch) exited with %s "
              "and no result; its output ended:\n%s", batch_id, app_import, code, tail)
    closed = close_failed_batch(batch_id, code)
    reason = (f"the batch process exited with code {code} before finishing batch {batch_id}"
              f" ({closed} server(s) not done)")
    lines = [line for line in tail.strip().splitlines() if line.strip()]
    if lines:
        # A long last line keeps its end: that is where the CLI's errors say what to do.
        said = lines[-1] if len(lines[-1]) <= SAID_CHARS else "\u2026" + lines[-1][-SAID_CHARS:]
        reason += f"; it said: {said}"
    raise BatchProcessError(
        reason + ". Check LM_BILLING_BATCH_PROCESS_APP (the child runs `flask --app "
        f"{app_import} lm-billing run-batch`) and the billing server's log, then run it again")


@writing
def close_failed_batch(batch_id: int, code: int) -> int:
    """End what is left of a batch whose process died: its unfinished runs fail, the servers
    they hold are free again, the batch is failed. Returns how many runs it ended."""
    session = get_state().session
    session.rollback()
    now = utcnow()
    runs = sa.select(RUN.c.id).where(RUN.c.batch_id == batch_id)
    ended = end_unfinished_runs(
        session, RUN.c.batch_id == batch_id, now, status="failed", code="BATCH_FAILED",
        message=f"the batch process exited (code {code}) before finishing this server; run it "
        "again, and see the billing server's log if it repeats")
    session.execute(
        sa.update(SERVER).where(SERVER.c.lease_run_id.in_(runs))
        .values(lease_owner=None, lease_expires_at=None, lease_run_id=None))
    session.execute(
        sa.update(BATCH).where(BATCH.c.id == batch_id, BATCH.c.finished_at.is_(None))
        .values(status="failed", finished_at=now))
    session.commit()
    return ended
