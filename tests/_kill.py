"""Seeded SIGKILL of a real `flask lm-billing ...` command in a child process (issue 14, items 6
and 10): the child runs the command through Flask's own CLI (FlaskGroup, as the `flask`
script does) on tests.sched_app, counts every SQL statement its engine executes, and kills
itself with SIGKILL right after statement N — inside whatever transaction is open then, so
the kill lands between any two statements of the run, the same way on every database.

How many iterations: LM_BILLING_KILL_SEEDS (default 1 in the normal suite; `make stress`
runs 25). The seeds are 0..n-1 and each picks N with random.Random(seed), so a failure is
reproduced by its test id alone.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SEEDS = list(range(int(os.environ.get("LM_BILLING_KILL_SEEDS", "1"))))

CHILD = """
import atexit, os, signal, sys
import sqlalchemy as sa
from flask.cli import FlaskGroup
from tests.sched_app import create_app as base_app

kill_at = int(os.environ.get("KILL_AT_STATEMENT", "0"))
seen = [0]

def create_app():
    app = base_app()
    with app.app_context():
        from lm_billing_plugin.state import get_state
        def hook(conn, cursor, statement, parameters, context, executemany):
            seen[0] += 1
            if seen[0] == kill_at:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        sa.event.listen(get_state().db.engine, "after_cursor_execute", hook)
    return app

atexit.register(lambda: print(f"statements={seen[0]}", file=sys.stderr, flush=True))
FlaskGroup(create_app=create_app).main(args=sys.argv[1:], prog_name="flask")
"""


def run_cli(db_url: str, args: list[str], *, kill_at: int = 0, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess[str]:
    """`flask lm-billing <args>` in a child; ``kill_at`` > 0: SIGKILL after that statement."""
    return subprocess.run(
        [sys.executable, "-c", CHILD, "lm-billing", *args], cwd=ROOT,
        env=dict(os.environ, SCHED_DB_URL=db_url, KILL_AT_STATEMENT=str(kill_at), **env),
        capture_output=True, text=True, timeout=timeout, check=False)


def statements_of(completed: subprocess.CompletedProcess[str]) -> int:
    """How many statements a child that ran to its end executed (its atexit line)."""
    for line in completed.stderr.splitlines():
        if line.startswith("statements="):
            return int(line.split("=", 1)[1])
    raise AssertionError(f"no statement count: {completed.stderr[-2000:]}")


def kill_point(seed: int, total: int) -> int:
    """The statement after which seed ``seed`` kills a run of ``total`` statements; skips
    the first few (the app's own start-up reads) so every kill lands in the command."""
    return random.Random(seed).randint(min(3, total), total)


def killed(completed: subprocess.CompletedProcess[str]) -> bool:
    return completed.returncode == -signal.SIGKILL
