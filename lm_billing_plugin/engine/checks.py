"""Connection and Enable Logging checks for one hosting server, step by step, for pages and CLI.

Built on the TclPort client only: no Flask, no database. Every failure carries user guidance.
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..i18n import M_
from ..tclport.client import DEFAULT_PASSWORD, DEFAULT_PORT, ClientSettings, TclPortClient
from ..tclport.errors import LOGGING_PATH, TclPortError
from ..tclport.records import LOGGING_LABELS, LOGGING_LISTS, LoggingState

__all__ = [
    "CONNECTION_STEPS",
    "ConnectionReport",
    "LoggingReport",
    "ServerCheck",
    "StepResult",
    "check_connection",
    "check_logging",
    "check_server",
    "enable_logging",
]

#: Steps of a connection check, in order; "password" is the protocol's auth.
CONNECTION_STEPS: Final = ("resolve", "connect", "greeting", "password", "version")
# Where each client phase is reported.
_PHASE_STEP: Final = {
    "resolve": "resolve",
    "connect": "connect",
    "greeting": "greeting",
    "auth": "password",
    "command:server_info": "version",
}
_STEP_OK: Final = {
    "resolve": M_("the host name resolves"),
    "connect": M_("TCP connection accepted"),
    "greeting": M_("it answers as a ListManager TclPort (protocol 1)"),
    "password": M_("the TclPort password is accepted"),
}
LISTS_LABEL: Final = LOGGING_LABELS[LOGGING_LISTS]
LOGGING_GUIDANCE: Final = M_(
    'Enable Logging must be "%(wanted)s" (%(path)s), else billing cannot count messages.'
) % {"wanted": LISTS_LABEL, "path": LOGGING_PATH}

Status = Literal["ok", "failed", "not_run"]


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step of a check: ``status`` is ok, failed or not_run; ``code`` only on failure."""

    step: str
    status: Status
    message: str = ""
    elapsed_ms: float | None = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status,
            "ok": self.ok,
            "message": self.message,
            "elapsed_ms": None if self.elapsed_ms is None else round(self.elapsed_ms, 1),
            "code": self.code,
        }


@dataclass(frozen=True, slots=True)
class ConnectionReport:
    """Outcome of :func:`check_connection`; ``error`` is the first failure, if any."""

    server: str
    host: str
    port: int
    steps: tuple[StepResult, ...]
    version: str | None = None
    product: str | None = None
    hostname: str | None = None
    round_trip_ms: float | None = None
    error: TclPortError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(s.ok for s in self.steps)

    @property
    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == "failed"), None)

    @property
    def message(self) -> str:
        """One line for the user: the guidance of the failure, or what was found."""
        if self.error is not None:
            return self.error.message
        return M_("connected; %(product)s %(version)s") % {
            "product": self.product or "ListManager", "version": self.version}

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "host": self.host,
            "port": self.port,
            "ok": self.ok,
            "message": self.message,
            "code": self.error.code if self.error else None,
            "version": self.version,
            "product": self.product,
            "hostname": self.hostname,
            "round_trip_ms": None if self.round_trip_ms is None else round(self.round_trip_ms, 1),
            "steps": [s.as_dict() for s in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class LoggingReport:
    """Enable Logging on one server: ``ok`` only when it is ``lists`` (billing can count).

    ``mode``/``label`` are None when the server could not be asked; then ``code`` says why.
    """

    server: str
    mode: str | None
    label: str | None
    ok: bool
    message: str
    code: str | None = None
    changed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "ok": self.ok,
            "mode": self.mode,
            "label": self.label,
            "message": self.message,
            "code": self.code,
            "changed": self.changed,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ServerCheck:
    """Connection and Enable Logging together, as ``servers check`` shows them."""

    connection: ConnectionReport
    logging: LoggingReport | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.connection.ok and self.logging is not None and self.logging.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.connection.server,
            "ok": self.ok,
            "connection": self.connection.as_dict(),
            "logging": self.logging.as_dict() if self.logging else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False)


def _run_connection(client: TclPortClient) -> ConnectionReport:
    """Connect step by step and ask server_info; leaves the client connected on success."""
    results: dict[str, StepResult] = {}
    clock = [time.monotonic()]

    def on_step(phase: str, elapsed_ms: float) -> None:
        step = _PHASE_STEP[phase]
        results[step] = StepResult(step, "ok", _STEP_OK[step], elapsed_ms)
        clock[0] = time.monotonic()

    def report(**found: Any) -> ConnectionReport:
        steps = tuple(results.get(s, StepResult(s, "not_run")) for s in CONNECTION_STEPS)
        return ConnectionReport(
            server=client.label, host=client.host, port=client.port, steps=steps, **found
        )

    try:
        client.connect(on_step=on_step)
        started = time.monotonic()
        info = client.server_info()
        round_trip = (time.monotonic() - started) * 1000.0
    except TclPortError as exc:
        step = _PHASE_STEP.get(exc.phase, "version")
        elapsed = (time.monotonic() - clock[0]) * 1000.0
        results[step] = StepResult(step, "failed", exc.message, elapsed, exc.code)
        return report(error=exc)
    results["version"] = StepResult(
        "version", "ok",
        M_("%(product)s %(version)s on %(host)s") % {
            "product": info.product, "version": info.version, "host": info.hostname},
        round_trip,
    )
    return report(
        version=info.version, product=info.product, hostname=info.hostname,
        round_trip_ms=round_trip,
    )


def _logging_report(server: str, state: LoggingState, *, changed: bool = False) -> LoggingReport:
    if state.counts_messages:
        message = M_('Enable Logging is "%(label)s": billing can count messages.') % {
            "label": state.label}
    else:
        # An unknown mode is shown with the server's own label, as it is.
        message = M_('Enable Logging is "%(label)s". %(guidance)s') % {
            "label": state.label, "guidance": LOGGING_GUIDANCE}
    return LoggingReport(
        server, state.mode, state.label, state.counts_messages, message, changed=changed
    )


def _failed_logging(server: str, exc: TclPortError) -> LoggingReport:
    return LoggingReport(server, None, None, False, exc.message, code=exc.code)


def _not_permitted(server: str, before: LoggingState | None, code: str) -> LoggingReport:
    message = M_(
        "this hosting server does not allow Enable Logging to be changed remotely: "
        'set it to "%(wanted)s" on the hosting server itself (%(path)s).'
    ) % {"wanted": LISTS_LABEL, "path": LOGGING_PATH}
    return LoggingReport(
        server,
        before.mode if before else None,
        before.label if before else None,
        False,
        message,
        code=code,
    )


def _client(
    host: str, port: int, password: str, name: str | None, settings: ClientSettings | None
) -> TclPortClient:
    return TclPortClient(host, port, password, name=name, settings=settings)


def check_connection(
    host: str,
    port: int = DEFAULT_PORT,
    password: str = DEFAULT_PASSWORD,
    *,
    name: str | None = None,
    settings: ClientSettings | None = None,
) -> ConnectionReport:
    """Resolve, connect, greeting, password, version: stops at the first failure."""
    with closing(_client(host, port, password, name, settings)) as client:
        return _run_connection(client)


def check_logging(
    host: str,
    port: int = DEFAULT_PORT,
    password: str = DEFAULT_PASSWORD,
    *,
    name: str | None = None,
    settings: ClientSettings | None = None,
) -> LoggingReport:
    """Read Enable Logging; ok only for "Yes, Log All Messages ... to Mailing Lists"."""
    with closing(_client(host, port, password, name, settings)) as client:
        try:
            client.connect()
            return _logging_report(client.label, client.logging())
        except TclPortError as exc:
            return _failed_logging(client.label, exc)


def enable_logging(
    host: str,
    port: int = DEFAULT_PORT,
    password: str = DEFAULT_PASSWORD,
    *,
    name: str | None = None,
    settings: ClientSettings | None = None,
) -> LoggingReport:
    """Switch Enable Logging to ``lists`` over TclPort (``logging_set lists``), if allowed."""
    before: LoggingState | None = None
    with closing(_client(host, port, password, name, settings)) as client:
        try:
            client.connect()
            before = client.logging()
            if before.counts_messages:
                return _logging_report(client.label, before)
            after = client.logging_set(LOGGING_LISTS)
            return _logging_report(client.label, after, changed=after.mode != before.mode)
        except TclPortError as exc:
            if exc.code == "NOT_PERMITTED":
                return _not_permitted(client.label, before, exc.code)
            return _failed_logging(client.label, exc)


def check_server(
    host: str,
    port: int = DEFAULT_PORT,
    password: str = DEFAULT_PASSWORD,
    *,
    name: str | None = None,
    settings: ClientSettings | None = None,
) -> ServerCheck:
    """Connection steps, then Enable Logging, over one connection."""
    with closing(_client(host, port, password, name, settings)) as client:
        connection = _run_connection(client)
        if not connection.ok:
            return ServerCheck(connection)
        try:
            state = client.logging()
        except TclPortError as exc:
            return ServerCheck(connection, _failed_logging(client.label, exc))
        return ServerCheck(connection, _logging_report(client.label, state))
