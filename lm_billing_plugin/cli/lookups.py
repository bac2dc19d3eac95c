"""`flask lm-billing find-admin|find-member`: search every active hosting server for a list admin
or a member, and delete memberships found, through the same services as the pages (lookups)."""

from __future__ import annotations

from typing import Any

import click

from ..engine import deletions, lookups
from ..tclport.records import MAX_MATCHES
from . import cli
from .output import EXIT_FAILED, actor, emit_json, fail, printable, table

_EXIT_HELP = (
    "Exit status: 0 = every active server was searched (and every deletion asked for was "
    "done); 1 = some servers could not be searched (or some deletions failed); 2 = bad input, "
    "no server could be searched, or every deletion failed."
)


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def _billing(list_id: int | None) -> str:
    return str(list_id) if list_id is not None else "-"


def _print_failures(search: lookups.AdminSearch | lookups.MemberSearch) -> None:
    for name in search.truncated:
        click.echo(
            f"\n{printable(name)}: more than {MAX_MATCHES:,} matched; only the first "
            f"{MAX_MATCHES:,} are shown: search for something more specific."
        )
    if search.failures:
        click.echo(f"\nNot searched ({_n(len(search.failures), 'server')}):")
        for failure in search.failures:
            click.echo(f"  {printable(failure.server)} ({failure.code}): "
                       f"{printable(failure.message)}")


def _summary(found: int, what: str, search: lookups.AdminSearch | lookups.MemberSearch) -> str:
    servers = len({r.server_id for r in search.results})
    return (f"\n{_n(found, what)} on {_n(servers, 'server')}; "
            f"{_n(len(search.searched), 'server')} searched.")


@cli.command("find-admin", epilog=_EXIT_HELP)
@click.argument("pattern")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def find_admin_command(pattern: str, as_json: bool) -> None:
    """Lists on every active server whose admin's email or name contains PATTERN.

    PATTERN is case-insensitive; separate several parts with | (e.g. 'smith|jones') to find
    admins matching any of them.
    """
    try:
        search = lookups.find_admin(pattern)
    except lookups.LookupInputError as exc:
        fail(str(exc))
    if as_json:
        emit_json(search.to_json())
        raise SystemExit(search.exit_code)
    if not search.searched and not search.failures:
        click.echo("No active hosting servers: add one with `flask lm-billing servers add`.")
        raise SystemExit(search.exit_code)
    if search.results:
        click.echo(table(
            ["Server", "Site", "List", "List admin", "Name", "Billing list"],
            [[r.server, r.site, r.list, r.admin, r.name, _billing(r.list_id)]
             for r in search.results],
        ))
    click.echo(_summary(len(search.results), "list", search))
    _print_failures(search)
    raise SystemExit(search.exit_code)


def _confirm(search: lookups.MemberSearch) -> bool:
    servers = len({r.server_id for r in search.results})
    question = (f"Delete {_n(len(search.results), 'membership')} of "
                f"{printable(search.query)} on {_n(servers, 'server')}?")
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:
        # No answer (no terminal, end of input, Ctrl-C): nothing is deleted unasked.
        fail("not confirmed, so nothing was deleted; give --yes to delete without asking")


@cli.command("find-member", epilog=_EXIT_HELP)
@click.argument("email")
@click.option("--delete", "delete", is_flag=True,
              help="Delete every membership found (asks first, naming how many).")
@click.option("--yes", is_flag=True, help="With --delete: do not ask.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def find_member_command(email: str, delete: bool, yes: bool, as_json: bool) -> None:
    """Every list on every active server that has EMAIL as a member (any letter case)."""
    if yes and not delete:
        fail("--yes only goes with --delete")
    try:
        search = lookups.find_member(email)
    except lookups.LookupInputError as exc:
        fail(str(exc))
    document: dict[str, Any] = search.to_json()
    if not as_json:
        if not search.searched and not search.failures:
            click.echo("No active hosting servers: add one with `flask lm-billing servers add`.")
            raise SystemExit(search.exit_code)
        if search.results:
            click.echo(table(
                ["Server", "Site", "List", "Email", "Type", "Joined", "Billing list"],
                [[r.server, r.site, r.list, r.email, r.type,
                  r.joined.isoformat() if r.joined else "", _billing(r.list_id)]
                 for r in search.results],
            ))
        click.echo(_summary(len(search.results), "membership", search))
        _print_failures(search)
    code = search.exit_code
    if delete:
        document["deletions"] = []
        if not search.results:
            if not as_json:
                click.echo("Nothing to delete.")
        elif yes or _confirm(search):
            # The pages' delete run, in the foreground: stored, audited, its CSV on the
            # Utilities page (billing/utilities/deletions/<run>.csv) like one from a page.
            result = deletions.delete_memberships(search.memberships(), actor=actor(),
                                                  email=search.query)
            document.update(result.to_json())
            code = max(code, result.exit_code)
            if not as_json:
                _print_deletions(result)
        elif not as_json:
            click.echo("Nothing was deleted.")
    if as_json:
        emit_json(document)
    raise SystemExit(min(code, EXIT_FAILED))


def _print_deletions(result: deletions.DeleteResult) -> None:
    click.echo()
    click.echo(table(
        ["Server", "List", "Email", "Outcome"],
        [[d.server, d.list, d.email, d.outcome.replace("_", " ")] for d in result.deletions],
    ))
    for d in result.deletions:
        if d.outcome == "failed":
            click.echo(f"\n{printable(d.server)}, list {printable(d.list)} ({d.code}): "
                       f"{printable(d.message or '')}")
    click.echo(
        f"\nDeleted {_n(result.count('deleted'), 'membership')}; "
        f"{result.count('not_found'):,} already gone; {result.count('failed'):,} failed."
    )
    click.echo(f"Stored as delete run {result.run_id} (its page and CSV: Billing: Utilities).")
