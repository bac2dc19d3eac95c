"""`flask lm-billing validate|sync|problems|fix|lists`: the reconciliation engine for operators
and cron, through the runner's services (the same calls and audit records as the pages)."""

from __future__ import annotations

import json
import os
import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from ..engine import batch_process, batches, fixes
from ..engine import servers as registry
from ..engine.reconcile import owners
from ..engine.store import load_snapshot
from ..models import PROBLEM_KINDS, PROBLEM_STATUSES, Problem, Server
from ..state import get_state
from . import cli
from .output import EXIT_OK, EXIT_PROBLEMS, actor, echo, emit_json, fail, table, when

# Problems printed per server after validate/sync before pointing to `problems`.
_SHOWN_PROBLEMS = 20
_EXIT_HELP = (
    "Exit status: 0 = every server done and no open problems; 1 = done but problems are "
    "open; 2 = at least one server could not be read (unreachable, refused, protocol error) "
    "or the command was given wrongly."
)


def _server_ids(names: Sequence[str], all_servers: bool) -> list[int] | None:
    """Server ids for NAME... (exact names), or None for --all; exits 2 on a bad request."""
    if all_servers and names:
        fail("give either --all or server names, not both")
    if not all_servers and not names:
        fail("name the servers to work on, or give --all (see `flask lm-billing servers list`)")
    if all_servers:
        return None
    try:
        return [s.id for s in registry.servers_by_name(names)]
    except registry.UnknownServers as exc:
        fail(str(exc))


def _print_batch(result: batches.BatchResult) -> None:
    if not result.servers:
        echo("No active hosting servers: add one with `flask lm-billing servers add`.")
        return
    verb = {"validate": "Validated", "sync": "Synced"}[result.kind]
    if result.dry_run:
        verb = "Dry-run synced"
    if result.dry_run:
        echo("Dry run: what sync would change; nothing was written.")
    rows = []
    for s in result.servers:
        if s.ok:
            outcome = "ok" if not s.problems else "problems"
        else:
            outcome = "skipped" if s.skipped_reason else "FAILED"
        changes = s.changes
        rows.append(
            [
                s.name,
                outcome,
                s.version or "",
                when(s.validated_at),
                when(s.synced_at),
                f"+{changes['created']} ~{changes['updated']} -{changes['removed']}",
                len(s.problems),
            ]
        )
    headers = ["Server", "Result", "Version", "Validated", "Synced", "Changes", "Problems"]
    echo(table(headers, rows))
    for s in result.servers:
        if s.skipped_reason:
            echo(f"\n{s.name}: skipped: {s.skipped_reason}")
        elif s.error is not None:
            echo(f"\n{s.name}: FAILED ({s.error['code']}): {s.error['message']}")
        if s.problems:
            kinds = Counter(p["kind"] for p in s.problems)
            summary = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
            echo(f"\n{s.name}: {len(s.problems)} open problems ({summary})")
            shown = s.problems[:_SHOWN_PROBLEMS]
            echo(
                table(
                    ["ID", "Kind", "Object", "Detail"],
                    [
                        ["-" if p["id"] is None else p["id"], p["kind"], p["object"], p["detail"]]
                        for p in shown
                    ],
                )
            )
            if len(s.problems) > len(shown):
                echo(
                    f"... and {len(s.problems) - len(shown)} more: flask lm-billing problems "
                    f"--server {shlex.quote(s.name)}"
                )
    ok = sum(1 for s in result.servers if s.ok)
    echo(f"\n{verb} {ok} of {len(result.servers)} servers.")
    if any(s.problems for s in result.servers) and not result.dry_run:
        echo("Fix them with `flask lm-billing fix PROBLEM_ID...` or on the Errors page.")


def _batch(
    kind: str, names: Sequence[str], all_servers: bool, as_json: bool, dry_run: bool = False
) -> None:
    ids = _server_ids(names, all_servers)
    if kind == "validate":
        result = batches.validate_servers(ids, actor=actor())
    else:
        result = batches.sync_servers(ids, actor=actor(), dry_run=dry_run)
    if as_json:
        emit_json(result.to_json())
    else:
        _print_batch(result)
    raise SystemExit(result.exit_code)


@cli.command("validate", epilog=_EXIT_HELP)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "all_servers", is_flag=True, help="Every active server.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def validate_command(names: tuple[str, ...], all_servers: bool, as_json: bool) -> None:
    """Validate servers: read everything over TclPort, compare with billing, record problems.

    Changes no billing data except each server's Validated time, Version and status.
    """
    _batch("validate", names, all_servers, as_json)


@cli.command("sync", epilog=_EXIT_HELP)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "all_servers", is_flag=True, help="Every active server.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--dry-run", is_flag=True, help="Show what sync would change; write nothing.")
def sync_command(names: tuple[str, ...], all_servers: bool, as_json: bool, dry_run: bool) -> None:
    """Sync servers: validate, then apply every difference (new sites and lists, changed
    lists, removed ones marked removed) and store this month's usage."""
    _batch("sync", names, all_servers, as_json, dry_run)


@cli.command("run-batch", epilog=_EXIT_HELP)
@click.argument("batch_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the whole result to this file as JSON (how a web process "
              "gets the result of the batch it handed to this command).")
def run_batch_command(batch_id: int, as_json: bool, record: Path | None) -> None:
    """Run a queued validate or sync batch (one that a page, the API or the scheduler
    queued): how LM_BILLING_BATCH_PROCESS_APP runs batches outside the web workers."""
    expected = os.environ.get(batch_process.DATABASE_ENV)
    mine = batch_process.database_identity(get_state().db.engine)
    if expected and expected != mine:
        fail(f"batch {batch_id} was queued in {expected}, but this app opens {mine}: "
             "LM_BILLING_BATCH_PROCESS_APP must build an app on the same database")
    try:
        result = batches.run_batch(batch_id)
    except RuntimeError as exc:  # not queued: already run, or no such batch
        fail(str(exc))
    if record is not None:
        partial = record.with_name(record.name + ".partial")
        partial.write_text(json.dumps(result.as_record()), encoding="utf-8")
        partial.replace(record)  # whole or absent: the parent never reads half a result
    if as_json:
        emit_json(result.to_json())
    else:
        _print_batch(result)
    raise SystemExit(result.exit_code)


def _problem_rows(server: str | None, kind: str | None, status: str) -> list[Any]:
    session = get_state().session
    query = (
        sa.select(
            Problem.id,
            Problem.kind,
            Problem.object_name,
            Problem.detail,
            Problem.status,
            Server.name.label("server"),
        )
        .outerjoin(Server, Server.id == Problem.server_id)
        .order_by(Server.name, Problem.kind, Problem.object_name, Problem.id)
    )
    if status != "all":
        query = query.where(Problem.status == status)
    if kind is not None:
        query = query.where(Problem.kind == kind)
    if server is not None:
        try:
            found = registry.servers_by_name([server], include_inactive=True)[0]
        except registry.UnknownServers as exc:
            fail(str(exc))
        query = query.where(Problem.server_id == found.id)
    return list(session.execute(query))


@cli.command("problems")
@click.option("--server", "server", metavar="NAME", help="Only this server's problems.")
@click.option("--kind", type=click.Choice(PROBLEM_KINDS), help="Only problems of this kind.")
@click.option(
    "--status",
    type=click.Choice((*PROBLEM_STATUSES, "all")),
    default="open",
    show_default=True,
    help="Which problems to list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def problems_command(server: str | None, kind: str | None, status: str, as_json: bool) -> None:
    """List validation problems (the "errors" to fix), open ones by default.

    Exit status: 0 = none of the listed problems is open; 1 = open problems are listed;
    2 = unknown server.
    """
    rows = _problem_rows(server, kind, status)
    if as_json:
        emit_json(
            [
                {
                    "id": r.id,
                    "server": r.server,
                    "kind": r.kind,
                    "object": r.object_name,
                    "detail": r.detail,
                    "status": r.status,
                }
                for r in rows
            ]
        )
    elif not rows:
        echo(f"No {'' if status == 'all' else status + ' '}problems.")
    else:
        echo(
            table(
                ["ID", "Server", "Kind", "Object", "Status", "Detail"],
                [[r.id, r.server or "-", r.kind, r.object_name, r.status, r.detail] for r in rows],
            )
        )
    raise SystemExit(EXIT_PROBLEMS if any(r.status == "open" for r in rows) else EXIT_OK)


@cli.command("fix")
@click.argument("problem_ids", nargs=-1, type=int, metavar="[PROBLEM_ID]...")
@click.option(
    "--all",
    "all_open",
    is_flag=True,
    help="Every open problem (narrow it with --server and --kind).",
)
@click.option("--server", "server", metavar="NAME", help="With --all: only this server.")
@click.option("--kind", type=click.Choice(PROBLEM_KINDS), help="With --all: only this kind.")
@click.option(
    "--enable-logging",
    is_flag=True,
    help="Let fixing logging_off switch the server's Enable Logging on through TclPort.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def fix_command(
    problem_ids: tuple[int, ...],
    all_open: bool,
    server: str | None,
    kind: str | None,
    enable_logging: bool,
    as_json: bool,
) -> None:
    """Fix selected problems: drift as sync would; logging_off only with --enable-logging;
    billing-rule problems name the action that solves them (assign an owner, change the plan).

    Exit status: 0 = every chosen problem is fixed (now or before); 1 = some need a person
    (billing rules, or logging_off without --enable-logging); 2 = a server could not be
    reached, a fix failed, or a problem id does not exist.
    """
    if all_open and problem_ids:
        fail("give either problem ids or --all, not both")
    if (server or kind) and not all_open:
        fail("--server and --kind narrow --all; with problem ids, name only the ids")
    if not all_open and not problem_ids:
        fail("name the problems to fix (ids from `flask lm-billing problems`), or give --all")
    ids = list(problem_ids) if not all_open else [r.id for r in _problem_rows(server, kind, "open")]
    if not ids:
        if as_json:
            emit_json({"problems": [], "changes": {}})
        else:
            echo("No open problems to fix.")
        raise SystemExit(EXIT_OK)
    result = fixes.fix_problems(ids, actor=actor(), enable_logging=enable_logging)
    if as_json:
        emit_json(result.to_json())
    else:
        echo(
            table(
                ["ID", "Server", "Kind", "Object", "Outcome", "What happened"],
                [
                    [
                        i.problem_id,
                        i.server or "-",
                        i.kind or "-",
                        i.object or "",
                        i.outcome,
                        i.message + (f"; next: {i.action}" if i.action else ""),
                    ]
                    for i in result.items
                ],
            )
        )
        for name, counts in result.changes.items():
            echo(
                f"{name}: created {counts.get('created', 0)}, updated "
                f"{counts.get('updated', 0)}, removed {counts.get('removed', 0)}"
            )
    raise SystemExit(result.exit_code)


def _utf8(name: str) -> bytes:
    # The protocol orders names by their UTF-8 bytes; so does this listing.
    return name.encode("utf-8", "surrogatepass")


@cli.command("lists")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def lists_command(name: str, as_json: bool) -> None:
    """Billing's view of a server's lists: site, members, status and owner (customer, group).

    Exit status: 0 = listed; 2 = unknown server.
    """
    try:
        server = registry.servers_by_name([name], include_inactive=True)[0]
    except registry.UnknownServers as exc:
        fail(str(exc))
    session = get_state().session
    snapshot = load_snapshot(session, server.id)
    owner_of = owners(snapshot)
    session.commit()
    out = []
    for row in sorted(snapshot.lists, key=lambda r: _utf8(r.name)):
        group = snapshot.groups.get(owner_of[row.id]) if row.id in owner_of else None
        out.append(
            {
                "name": row.name,
                "site": row.site_name,
                "descr": row.descr,
                "members": row.members,
                "admin": row.admin,
                "status": row.status,
                "customer": group.customer_name if group else None,
                "group": group.name if group else None,
            }
        )
    if as_json:
        emit_json(out)
        raise SystemExit(EXIT_OK)
    if not out:
        echo(
            f"Billing holds no lists of {server.name!r} yet: sync it first "
            f"(flask lm-billing sync {shlex.quote(server.name)})."
        )
        raise SystemExit(EXIT_OK)
    echo(
        table(
            ["Name", "Site", "Members", "List admin", "Status", "Customer", "Group",
             "Description"],
            [
                [
                    r["name"],
                    r["site"],
                    r["members"],
                    r["admin"],
                    r["status"],
                    r["customer"] or "-",
                    r["group"] or "-",
                    r["descr"],
                ]
                for r in out
            ],
        )
    )
    raise SystemExit(EXIT_OK)
