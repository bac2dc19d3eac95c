"""Shared output helpers of the `flask lm-billing` commands: plain-text tables, times, JSON,
errors with their exit status, and who the audit log names for a command-line change."""

from __future__ import annotations

import functools
import getpass
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

import click

# Exit statuses shared by every command of the group (documented in the README).
EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_FAILED = 2


def actor() -> str:
    """Who a change made from the command line is recorded as in the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"cli:{user}"


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``Error: message`` on stderr and exit with ``code``."""
    echo(f"Error: {message}", err=True)
    sys.exit(code)


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "never"


def iso(value: datetime | None) -> str | None:
    """A UTC time for JSON, ISO 8601 with its offset (as the engine's JSON writes them)."""
    return value.isoformat() if value is not None else None


def emit_json(document: Any) -> None:
    # ensure_ascii=False keeps non-ASCII names byte for byte as the server sent them.
    click.echo(json.dumps(document, ensure_ascii=False, indent=2))


# Bidi embeddings/overrides/isolates and marks, and the Unicode line separators: they reorder
# or break what a terminal shows, so a name could make one line read as another.
_BIDI = frozenset("\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069")


def _unsafe(ch: str, keep: str) -> bool:
    return ch not in keep and (unicodedata.category(ch) == "Cc" or ch in _BIDI)


# The same test for a whole string at C speed (speed, issue 15: a validate of 50 servers
# prints 1,000 problem lines). Category Cc is exactly U+0000-U+001F and U+007F-U+009F.
_UNSAFE_CHARS = "\x00-\x1f\x7f-\x9f" + "".join(sorted(_BIDI))


@functools.cache
def _unsafe_search(keep: str) -> Callable[[str], re.Match[str] | None]:
    pattern = f"[{_UNSAFE_CHARS}]"
    if keep:
        pattern = f"(?![{re.escape(keep)}]){pattern}"
    return re.compile(pattern).search


def _printable(value: str, keep: str = "") -> str:
    # Control characters (C0, DEL, C1: ESC starts the terminal's own commands, such as OSC 52
    # clipboard writes or window titles) and bidi overrides are shown escaped, whether a
    # hosting server sent them or someone typed them. JSON output keeps them as they are.
    if _unsafe_search(keep)(value) is None:
        return value
    return "".join(repr(ch)[1:-1] if _unsafe(ch, keep) else ch for ch in value)


def echo(message: str, *, err: bool = False) -> None:
    """``click.echo`` for human output: control characters and bidi overrides escaped.

    Line breaks and tabs stay (messages and tables are built with them); every other
    character that would steer the terminal is printed as its escape (``\\x1b``).
    """
    click.echo(_printable(message, keep="\n\t"), err=err)


def printable(value: str) -> str:
    """``value`` with control characters escaped, for a line of human output outside a table."""
    return _printable(value)


def _width(value: str) -> int:
    if value.isascii():
        return len(value)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with a header rule; cells are str()-ed and control chars escaped."""
    cells = [[_printable("" if v is None else str(v)) for v in row] for row in rows]
    widths = [_width(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], _width(cell))

    def line(values: Sequence[str]) -> str:
        padded = [v + " " * (widths[i] - _width(v)) for i, v in enumerate(values)]
        return "  ".join(padded).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)
