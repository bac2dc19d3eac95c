"""`flask lm-billing servers add|list|check|enable-logging` and `rotate-keys`: the
hosting-server registry from the command line, through the same service functions as the
pages (engine.servers)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from ..engine import servers as registry
from ..engine.checks import ConnectionReport, LoggingReport
from ..models import Server
from ..secrets import SecretsError
from ..state import get_state
from ..tclport.client import DEFAULT_PORT
from . import cli
from .output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PROBLEMS,
    actor,
    echo,
    emit_json,
    fail,
    table,
    when,
)

PASSWORD_ENV = "LM_BILLING_TCLPORT_PASSWORD"  # noqa: S105 - the variable's name, not a password
# Form field -> the option a command-line user typed it with.
_OPTION = {"name": "--name", "host": "--host", "port": "--port", "comments": "--comments"}


@cli.group("servers")
def servers_group() -> None:
    """Hosting servers: add, list, check the connection, enable logging.

    Exit status: 0 = done (and, for check, every step passed with logging on);
    1 = check/enable-logging: reachable but Enable Logging is off;
    2 = invalid input, unknown server, or the server could not be reached.
    """


def _read_password(password_file: Path | None, ask: bool) -> tuple[str | None, str]:
    """The TclPort password from a file, a hidden prompt or the environment (None = the
    default), and where it came from, for the confirmation message."""
    if password_file is not None and ask:
        fail("give either --password-file or --ask-password, not both")
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read the password file {str(password_file)!r}: {exc}")
        # A file written by `echo` ends with a newline that is not part of the password.
        password = text.rstrip("\r\n")
        if not password:
            fail(f"the password file {str(password_file)!r} is empty")
        return password, "from --password-file"
    if ask:
        value: str = click.prompt(
            "TclPort password", hide_input=True, confirmation_prompt=True, err=True
        )
        return value, "from the prompt"
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env, f"from {PASSWORD_ENV}"
    return None, "ListManager's default (TCLPORTPasswd), nothing stored"


@servers_group.command("add")
@click.option("--name", required=True, help="Name shown in billing (unique).")
@click.option("--host", required=True, help="Host name or IP address (no URL, no port).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="TclPort port.")
@click.option("--comments", default="", help="Free text shown on the Servers page.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the TclPort password from this file (first line).",
)
@click.option(
    "--ask-password", is_flag=True, help="Prompt for the TclPort password (hidden input)."
)
def add_command(
    name: str,
    host: str,
    port: int,
    comments: str,
    password_file: Path | None,
    ask_password: bool,
) -> None:
    """Register a hosting server.

    The TclPort password comes from --password-file, from --ask-password, or from the
    environment variable LM_BILLING_TCLPORT_PASSWORD; with none of them the server uses
    ListManager's default password (TCLPORTPasswd) and nothing is stored.
    """
    password, source = _read_password(password_file, ask_password)
    try:
        server = registry.create_server(name, host, port, comments, password, actor=actor())
    except registry.ServerFieldError as exc:
        for field, message in exc.errors.items():
            echo(f"Error: {_OPTION.get(field, field)}: {message}", err=True)
        raise SystemExit(EXIT_FAILED) from None
    if password:
        source += ", stored encrypted"
    echo(
        f"Added server {server.name!r} ({server.host}:{server.port}); password: {source}.\n"
        f"Next: flask lm-billing servers check {_shell_word(server.name)}"
    )


def _shell_word(value: str) -> str:
    return shlex.quote(value)


@servers_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--all", "show_all", is_flag=True, help="Include deactivated servers.")
def list_command(as_json: bool, show_all: bool) -> None:
    """List hosting servers (whether a password is set, never the password)."""
    session = get_state().session
    query = sa.select(Server).order_by(Server.name)
    if not show_all:
        query = query.where(Server.active.is_(True))
    rows = list(session.scalars(query))
    if as_json:
        emit_json([registry.server_json(s) for s in rows])
        return
    if not rows:
        echo("No hosting servers yet: add one with `flask lm-billing servers add`.")
        return
    headers = [
        "Name",
        "Host Name",
        "Port",
        "Status",
        "Version",
        "Validated",
        "Synced",
        "Password",
        "Comments",
    ]
    if show_all:
        headers.append("Active")
    body = []
    for s in rows:
        row: list[Any] = [
            s.name,
            s.host,
            s.port,
            s.status,
            s.version or "",
            when(s.validated_at),
            when(s.synced_at),
            "set" if s.password_encrypted else "default",
            s.comments,
        ]
        if show_all:
            row.append("yes" if s.active else "no")
        body.append(row)
    echo(table(headers, body))


def _one(name: str) -> Server:
    try:
        return registry.servers_by_name([name])[0]
    except registry.UnknownServers as exc:
        fail(str(exc))


def _check_exit(status: str) -> int:
    if status == "ok":
        return EXIT_OK
    if status == "logging_off":
        return EXIT_PROBLEMS
    return EXIT_FAILED


def _print_check(
    server: Server, connection: ConnectionReport, logging_report: LoggingReport | None
) -> None:
    echo(f"Server {server.name} ({connection.host}:{connection.port})")
    rows = []
    for step in connection.steps:
        elapsed = "" if step.elapsed_ms is None else f"{step.elapsed_ms:.1f} ms"
        # A failed step's guidance is long: it is printed in full below the table.
        detail = f"{step.code}: see below" if step.status == "failed" else step.message
        rows.append([step.step, step.status.replace("_", " "), elapsed, detail])
    if logging_report is not None:
        rows.append(
            ["logging", "ok" if logging_report.ok else "failed", "", logging_report.label or ""]
        )
    echo(table(["Step", "Result", "Time", "Detail"], rows))
    echo("")
    if connection.error is not None:
        failed = connection.failed_step
        where = failed.step if failed else "connection"
        echo(f"FAILED at {where} ({connection.error.code}): {connection.error.message}")
    elif logging_report is not None:
        prefix = "OK: " if logging_report.ok else "LOGGING OFF: "
        if logging_report.mode is None:
            prefix = f"FAILED ({logging_report.code}): "
        echo(prefix + logging_report.message)


@servers_group.command("check")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def check_command(name: str, as_json: bool) -> None:
    """Check the connection (resolve, connect, greeting, password, version) and Enable Logging.

    Exit status: 0 = every step passed and logging is on; 1 = reachable but Enable Logging
    is off; 2 = the server could not be reached, refused us, or answered wrongly.
    """
    server = _one(name)
    try:
        connection, logging_report = registry.check_server(server.id, actor=actor())
    except registry.ServerError as exc:
        fail(str(exc))
    status = get_state().session.get(Server, server.id)
    assert status is not None
    code = _check_exit(status.status)
    if as_json:
        doc = {
            "name": server.name,
            "host": connection.host,
            "port": connection.port,
            "ok": code == EXIT_OK,
            "status": status.status,
            "message": status.status_message,
            "connection": connection.as_dict(),
            "logging": logging_report.as_dict() if logging_report else None,
        }
        emit_json(doc)
    else:
        _print_check(server, connection, logging_report)
    raise SystemExit(code)


@servers_group.command("enable-logging")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def enable_logging_command(name: str, as_json: bool) -> None:
    """Switch Enable Logging to "Yes, Log All Messages that ListManager Sends to Mailing
    Lists" over TclPort.

    Exit status: 0 = logging is on now; 1 = the server does not allow the change
    (NOT_PERMITTED: do it on the hosting server); 2 = the server could not be reached.
    """
    server = _one(name)
    try:
        report = registry.enable_logging(server.id, actor=actor())
    except registry.ServerError as exc:
        fail(str(exc))
    if report.ok:
        code = EXIT_OK
    elif report.code in (None, "NOT_PERMITTED"):
        code = EXIT_PROBLEMS
    else:
        code = EXIT_FAILED
    if as_json:
        emit_json({"name": server.name, **report.as_dict(), "server": server.name})
    else:
        if report.ok:
            verb = "switched on" if report.changed else "already on"
            echo(f"{server.name}: Enable Logging {verb}: {report.label}")
        else:
            echo(f"{server.name}: {report.message}", err=code == EXIT_FAILED)
    raise SystemExit(code)


@cli.command("rotate-keys")
def rotate_keys_command() -> None:
    """Re-encrypt the stored TclPort passwords with the first key.

    Key rotation: put a new key (flask lm-billing generate-key) first in
    LM_BILLING_ENCRYPTION_KEYS, keep the old ones after it, restart, run this command; then
    the old keys can be removed. Exit status: 0 = every stored password is re-encrypted;
    2 = no key is set, or a stored password no key decrypts (its server is named: enter the
    password again on its edit page).
    """
    try:
        rotated, unreadable = registry.rotate_passwords(actor=actor())
    except SecretsError as exc:
        fail(str(exc))
    echo(f"Re-encrypted {rotated} stored TclPort password(s) with the first key of "
         "LM_BILLING_ENCRYPTION_KEYS.")
    if unreadable:
        for name in unreadable:
            echo(f"Error: server {name!r}: its stored password cannot be decrypted with any key "
                 "of LM_BILLING_ENCRYPTION_KEYS; enter the password again.", err=True)
        echo("Keep the old keys until those passwords are entered again.", err=True)
        raise SystemExit(EXIT_FAILED)
    echo("The keys after the first one can now be removed.")
