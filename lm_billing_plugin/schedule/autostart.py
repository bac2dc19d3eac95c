"""Lazy start of the scheduler service in serving processes, when LM_BILLING_SCHEDULER_AUTOSTART
asks for it: on the first Billing request of a worker, never at import, init_app, tests or CLI."""

from __future__ import annotations

import os
import sys
import threading

from flask import Flask, current_app, request

from ..state import get_state


def should_autostart(app: Flask) -> bool:
    """Whether this process should run the ticker for ``app`` on its first request.

    Yes in a serving process (gunicorn/uWSGI worker, ``flask run``) when
    LM_BILLING_SCHEDULER_AUTOSTART and LM_BILLING_SCHEDULER_ENABLED are on. No under tests
    (``app.testing``) and under ``flask`` CLI commands other than ``flask run``. The Werkzeug
    reloader's parent process never serves a request, so it never starts one either (only
    the child, with WERKZEUG_RUN_MAIN=true, does).
    """
    settings = get_state(app).settings
    if not (settings.scheduler_autostart and settings.scheduler_enabled):
        return False
    if app.testing:
        return False
    return not _under_cli_command()


def _under_cli_command() -> bool:
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.command.name != "run":
        return True
    argv = sys.argv
    script = os.path.basename(argv[0]) if argv else ""
    is_flask = script in ("flask", "flask.exe") or (
        script == "__main__.py" and os.path.basename(os.path.dirname(argv[0])) == "flask"
    )
    return is_flask and "run" not in argv[1:]


_AUTOSTART_LOCK = threading.Lock()
BILLING_BLUEPRINTS = frozenset({"lm_billing", "lm_billing_api"})


def install_autostart(app: Flask) -> None:
    """Arrange for the scheduler to start lazily in a serving process (never here)."""

    def start_on_first_request() -> None:
        # The service module (batches, notifications, SMTP) when a request comes, not at
        # init_app: a CLI process installs this hook but never serves a request.
        from .service import SERVICE_EXTRA, SchedulerService

        state = get_state(app)
        if SERVICE_EXTRA in state.extras:
            return
        # Only a Billing page (or the API) starts it: the host's own pages, its /login or
        # health checks, say nothing about wanting billing work in this process.
        if request.blueprint not in BILLING_BLUEPRINTS:
            return
        with _AUTOSTART_LOCK:
            if SERVICE_EXTRA in state.extras:
                return
            if not should_autostart(current_app):
                state.extras[SERVICE_EXTRA] = None
                return
            service = SchedulerService(
                app, first_run_delay=state.settings.validate_interval
            )
            state.extras[SERVICE_EXTRA] = service
            service.start(blocking=False)

    app.before_request(start_on_first_request)


def stop_service(app: Flask) -> None:
    """Stop this process's ticker for ``app`` (a run going on is recorded as interrupted)."""
    from .service import SERVICE_EXTRA, SchedulerService

    state = get_state(app)
    with _AUTOSTART_LOCK:
        service = state.extras.pop(SERVICE_EXTRA, None)
    if isinstance(service, SchedulerService):
        service.shutdown(abandon=True)


__all__ = ["install_autostart", "should_autostart", "stop_service"]
