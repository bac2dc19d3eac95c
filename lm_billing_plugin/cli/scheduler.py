"""`flask lm-billing scheduler` (a dedicated scheduler process, until SIGTERM/SIGINT) and
`flask lm-billing run-due` (one tick, for cron): both drive scheduler.SchedulerService."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import click
from flask import current_app

from ..schedule.service import SchedulerService
from ..state import get_state
from . import cli

DISABLED = (
    "Scheduled validation is disabled (LM_BILLING_SCHEDULER_ENABLED is False): nothing to "
    "run. Set LM_BILLING_SCHEDULER_ENABLED = True to schedule validation."
)


def _ensure_logging() -> None:
    # A dedicated process is the entry point, so it may give the log a place to go when the
    # host configured none (systemd's journal reads stderr).
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


@cli.command("scheduler")
def scheduler_command() -> None:
    """Run the schedule in this process until SIGTERM or Ctrl-C (recommended in production).

    Any number of these (and of autostarted web processes) may run on any hosts that share
    the database: each due run is executed by exactly one of them. On the first SIGTERM or
    Ctrl-C the process stops ticking and lets a run in progress finish; a second one
    abandons the run (recorded as interrupted) and exits at once.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = get_state(app).settings
    if not settings.scheduler_enabled:
        click.echo(DISABLED, err=True)
        sys.exit(1)
    _ensure_logging()
    service = SchedulerService(app)
    signals_seen = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            service.stop()
        else:
            service.shutdown(abandon=True)
            raise SystemExit(0)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    click.echo(
        f"lm-billing scheduler {service.owner}: scheduled {service.kind} every "
        f"{settings.validate_interval:g} s; SIGTERM or Ctrl-C stops it."
    )
    try:
        service.start(blocking=True)
        # wait_idle also waits for a tick in flight, which may just have claimed a run.
        if not service.wait_idle(timeout=0.5):
            running = service.running_run
            which = f" {running.run_id}" if running is not None else ""
            click.echo(f"Waiting for scheduled run{which} to finish; stop again to abandon it.")
            while not service.wait_idle(timeout=0.2):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("lm-billing scheduler stopped.")


@cli.command("run-due")
def run_due_command() -> None:
    """Run the scheduled validation once if it is due (for cron, e.g. every minute).

    Exit status: 0 = nothing due, someone else runs it, or the run went fine; 1 = the run
    found problems; 2 = the run failed or the database could not be reached.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = get_state(app).settings
    if not settings.scheduler_enabled:
        click.echo(DISABLED, err=True)
        sys.exit(1)
    service = SchedulerService(app)
    outcome = service.run_due()
    if outcome == "error":
        click.echo(
            "Could not read the schedule from the database (see the log above); check "
            "SQLALCHEMY_DATABASE_URI and that `flask lm-billing db upgrade` has run.",
            err=True,
        )
        sys.exit(2)
    if outcome != "ran" or service.last_run is None:
        next_at = service.next_run_at()
        when = next_at.strftime("%Y-%m-%d %H:%M:%S UTC") if next_at else "not scheduled"
        click.echo(f"Nothing due (or another process is running it); next run at {when}.")
        return
    run_id, status = service.last_run
    click.echo(f"Scheduled {service.kind} run {run_id}: {status}.")
    if status == "problems":
        sys.exit(1)
    if status != "ok":
        sys.exit(2)
