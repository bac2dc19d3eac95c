"""Load test of the demo deployment: gunicorn (workers x threads) on SQLite or PostgreSQL, users
browsing while the scheduled validation and an operator's "Validate All" run over simulated servers.

``python -m lm_billing_plugin.testing.load [--database URL] [--servers 200] [--users 20] ...``
(``make stress`` runs the long version on SQLite and, when ``LM_BILLING_TEST_POSTGRES_URL`` is
set, on PostgreSQL). Everything listens on 127.0.0.1 only, and every phase is bounded in time.
Exit status 0 when the run met its bounds (no page error, no ``database is locked``, both
batches finished, no lease or unfinished run left, p95 under load below ``--max-ratio`` x idle).
"""

from __future__ import annotations

import argparse
import http.client
import http.cookiejar
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from ..engine.batches import validate_servers
from ..extension import LMBilling
from ..migrate import downgrade, upgrade
from ..models import Batch, Run, Server, TaskRun, TaskState, utcnow
from ..schedule.claims import TASK
from .simulator import HOSTILE_MODES, Dataset, HostSim

__all__ = ["LoadReport", "main", "run_load"]

# Misbehaviours a hostile server cycles through (each fails its own run, never the batch).
HOSTILE = tuple(m for m in ("silent", "trickle", "reset", "garbage_greeting", "bad_utf8",
                            "malformed_list", "truncated_body", "not_tclport")
                if m in HOSTILE_MODES)
LOCKED = "database is locked"
WARM_UP = 3.0  # seconds of browsing before the idle figures count
DEMO_APP = "lm_billing_plugin.demo:create_app()"
BATCHES_IN = ("process", "threads")
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')
# Fast timeouts: the servers are local; a hostile one must fail within seconds.
APP_ENV = {
    "FLASK_LM_BILLING_CONNECT_TIMEOUT": "1.0",
    "FLASK_LM_BILLING_READ_TIMEOUT": "1.0",
    "FLASK_LM_BILLING_OPERATION_TIMEOUT": "3.0",
    "FLASK_LM_BILLING_SERVER_DEADLINE": "6.0",
    "FLASK_LM_BILLING_VALIDATE_INTERVAL": "86400.0",
    "FLASK_LM_BILLING_SCHEDULER_AUTOSTART": "true",
}


@dataclass
class Sample:
    phase: str
    path: str
    status: int
    seconds: float
    error: str = ""


@dataclass
class LoadReport:
    """What one load run measured, and whether it met its bounds (``problems`` empty)."""

    database: str
    servers: int
    hostile: int
    users: int
    batches_in: str = "process"
    idle_p50: float = 0.0
    idle_p95: float = 0.0
    load_p50: float = 0.0
    load_p95: float = 0.0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    lock_errors: int = 0
    batches: list[dict[str, Any]] = field(default_factory=list)
    run_failures: dict[str, int] = field(default_factory=dict)
    leftover_leases: int = 0
    unfinished_runs: int = 0
    seconds_to_finish: float = 0.0
    problems: list[str] = field(default_factory=list)
    # Per page (ids as N): requests, p50 and p95 idle and under validation, in seconds.
    pages: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def gunicorn_command(*args: str) -> list[str]:
    """This interpreter's gunicorn with ``args``; without its control socket where it has
    one (gunicorn 25+ puts it at ~/.gunicorn/gunicorn.ctl, shared by every gunicorn of the
    user: two at once, as in the parallel test suite, would take it from each other)."""
    import gunicorn.config  # type: ignore[import-untyped]

    names = {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}
    quiet = ["--no-control-socket"] if "control_socket_disable" in names else []
    return [str(Path(sys.executable).parent / "gunicorn"), *quiet, *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _p(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _per_page(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    grouped: dict[str, dict[str, list[float]]] = {}
    for sample in samples:
        if sample.error or sample.phase not in ("idle", "load"):
            continue
        page = grouped.setdefault(re.sub(r"/\d+", "/N", sample.path), {"idle": [], "load": []})
        page[sample.phase].append(sample.seconds)
    return {
        path: {f"{phase}_{what}": value
               for phase, times in phases.items()
               for what, value in (("requests", float(len(times))), ("p50", _p(times, 0.5)),
                                   ("p95", _p(times, 0.95)))}
        for path, phases in sorted(grouped.items())
    }


class _User:
    """One browser: its own cookies, logged in to the demo portal."""

    def __init__(self, base: str, name: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.name = name

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, str]:
        try:
            with self.opener.open(self.base + path, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")

    def post(self, path: str, form: dict[str, str], timeout: float = 30.0) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode()
        try:
            with self.opener.open(self.base + path, data=data, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")

    def login(self) -> None:
        _status, html = self.get("/login")
        self.post("/login", {"csrf_token": _token(html), "username": self.name,
                             "password": "billing-demo"})


def _token(html: str) -> str:
    match = _CSRF.search(html)
    if match is None:
        raise RuntimeError("no CSRF token on the page")
    return match.group(1) or match.group(2)


def _datasets(count: int, lists: int) -> list[Dataset]:
    return [Dataset.generate(sites=2, lists=lists, seed=i + 1) for i in range(count)]


def serve_simulators(count: int, lists: int, hostile_count: int) -> None:
    """The child process's side of :class:`_Simulators`: start the servers, print their
    addresses as one JSON line, serve until standard input closes, stop them."""
    sims = []
    try:
        for i, dataset in enumerate(_datasets(count, lists)):
            mode = HOSTILE[i % len(HOSTILE)] if i < hostile_count else None
            sims.append(HostSim(dataset, hostile=mode,
                                hostile_on="command" if i % 2 else "greeting").start())
        print(json.dumps([list(s.address) for s in sims]), flush=True)  # noqa: T201 - to the parent
        sys.stdin.read()
    finally:
        for sim in sims:
            sim.stop()


class _Simulators:
    """The hosting servers in a process of their own, as real ones are: in the driver's
    process their replies would compete for its interpreter with the users it times, and the
    latency it measures would be partly its own."""

    def __init__(self, count: int, lists: int, hostile_count: int) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - this interpreter, this module
            [sys.executable, "-m", "lm_billing_plugin.testing.load",
             "--serve-simulators", str(count), "--lists", str(lists),
             "--hostile-count", str(hostile_count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError(f"the simulators did not start (exit {self.proc.returncode})")
        self.addresses: list[tuple[str, int]] = [(h, int(p)) for h, p in json.loads(line)]

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            conn.request("GET", "/login")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    raise RuntimeError("gunicorn did not answer within a minute")


def _setup_app(url: str) -> Flask:
    """This process's own app on the demo's database, to prepare it and read the outcome (the
    demo itself runs under gunicorn; it is above this layer and is named by its path)."""
    app = Flask("lm_billing_load")
    app.config.update(TESTING=True, SECRET_KEY="load-test-setup",  # noqa: S106 - never served
                      SQLALCHEMY_DATABASE_URI=url, LM_BILLING_SCHEDULER_AUTOSTART=False)
    # The demo's timeouts for this process's own validation before the browsing starts.
    app.config.update({key.removeprefix("FLASK_"): float(value)
                       for key, value in APP_ENV.items() if key.endswith(("TIMEOUT", "DEADLINE"))})
    db = SQLAlchemy()
    db.init_app(app)
    LMBilling(app)
    return app


def run_load(
    *, database: str | None, servers: int = 200, hostile_share: float = 0.1, users: int = 20,
    idle_seconds: float = 15.0, load_seconds: float = 120.0, workers: int = 2, threads: int = 4,
    lists: int = 30, max_ratio: float = 2.0, workdir: str | None = None,
    think: tuple[float, float] = (0.5, 2.0), batches_in: str = "process",
) -> LoadReport:
    """Run one bounded load test and return its report (see the module docstring).
    ``batches_in``: "process" runs the batches the gunicorn workers start in a process of
    their own (LM_BILLING_BATCH_PROCESS_APP, as a deployment should), "threads" in the
    workers' threads (the plugin's default)."""
    if batches_in not in BATCHES_IN:
        raise ValueError(f"batches_in must be one of {BATCHES_IN}, not {batches_in!r}")
    own_dir = tempfile.TemporaryDirectory(prefix="lm-billing-load-") if workdir is None else None
    base_dir = Path(workdir or own_dir.name)  # type: ignore[union-attr]
    instance = base_dir / "instance"
    instance.mkdir(parents=True, exist_ok=True)
    url = database or f"sqlite:///{instance / 'demo.sqlite'}"
    env = {**os.environ, **APP_ENV, "FLASK_INSTANCE_PATH": str(instance),
           "FLASK_SQLALCHEMY_DATABASE_URI": json.dumps(url)}
    env.pop("FLASK_LM_BILLING_BATCH_PROCESS_APP", None)
    if batches_in == "process":
        env["FLASK_LM_BILLING_BATCH_PROCESS_APP"] = DEMO_APP
    app = _setup_app(url)
    if database:
        downgrade(app, "base")
    upgrade(app)
    hostile_count = round(servers * hostile_share)
    sims: _Simulators | None = None
    report = LoadReport(url.split(":", 1)[0].split("+", 1)[0], servers, hostile_count, users,
                        batches_in)
    proc: subprocess.Popen[bytes] | None = None
    log_path = base_dir / "gunicorn.log"
    try:
        sims = _Simulators(servers, lists, hostile_count)
        with app.app_context():
            from ..state import get_state

            session = get_state().session
            session.add_all([Server(name=f"load-{i:03d}", host=host, port=port)
                             for i, (host, port) in enumerate(sims.addresses)])
            # Not due while the idle figures are taken; made due when the load starts.
            session.merge(TaskState(name=TASK, next_run_at=utcnow() + timedelta(days=1)))
            session.commit()
            ids = list(session.scalars(sa.select(Server.id)))
            session.commit()
            # The fleet as operators browse it: validated once (errors, statuses, lists), so
            # the idle pages show the data the pages under validation show, and the load is a
            # re-validation, as a scheduled one is.
            validate_servers(None, actor="load-setup")
            first_batch = session.scalar(sa.select(sa.func.max(Batch.id))) or 0
            first_run = session.scalar(sa.select(sa.func.max(Run.id))) or 0
            session.commit()
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter's gunicorn
                gunicorn_command("-w", str(workers), "--threads", str(threads),
                                 "-b", f"127.0.0.1:{port}", "--timeout", "120",
                                 DEMO_APP),
                env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(base_dir),
            )
        _wait_ready(port, proc)
        samples: list[Sample] = []
        lock = threading.Lock()
        # Logging in (a password hash each) and the workers' first pages are not browsing:
        # the idle figures start once every user is in and a warm-up has passed.
        phase = {"name": "warm-up"}
        logged_in = threading.Barrier(users + 1)
        stop = threading.Event()
        pages = ["/billing/", "/billing/errors", "/billing/background", "/billing/customers",
                 "/billing/plans", "/billing/servers/{id}", "/billing/servers/{id}",
                 "/billing/?sort=problems&page=2"]

        def browse(n: int) -> None:
            rng = random.Random(n)
            user = _User(base, "viewer" if n % 2 else "operator")
            user.login()
            logged_in.wait(timeout=120)
            while not stop.is_set():
                path = rng.choice(pages).format(id=rng.choice(ids))
                start = time.monotonic()
                error = ""
                try:
                    status, body = user.get(path)
                except Exception as exc:  # a refused or dropped connection is an error too
                    status, body, error = 0, "", f"{type(exc).__name__}: {exc}"
                elapsed = time.monotonic() - start
                if status >= 500 or status == 0:
                    error = error or f"HTTP {status}"
                if LOCKED in body:
                    error = f"{LOCKED} on the page"
                with lock:
                    samples.append(Sample(phase["name"], path, status, elapsed, error))
                time.sleep(rng.uniform(*think))

        browsers = [threading.Thread(target=browse, args=(n,), daemon=True)
                    for n in range(users)]
        for t in browsers:
            t.start()
        logged_in.wait(timeout=120)
        time.sleep(WARM_UP)
        phase["name"] = "idle"
        time.sleep(idle_seconds)
        # The load: the scheduled validation falls due and the operator clicks Validate All.
        phase["name"] = "load"
        started = time.monotonic()
        with app.app_context():
            session = get_state().session
            session.execute(sa.update(TaskState).where(TaskState.name == TASK)
                            .values(next_run_at=utcnow()))
            session.commit()
        operator = _User(base, "operator")
        operator.login()
        _status, html = operator.get("/billing/")
        status, _body = operator.post("/billing/servers/validate",
                                      {"csrf_token": _token(html), "scope": "all"})
        if status >= 400:
            report.errors.append(f"Validate All answered HTTP {status}")
        deadline = started + load_seconds
        finished = False
        while time.monotonic() < deadline:
            time.sleep(1.0)
            with app.app_context():
                session = get_state().session
                batches = session.execute(sa.select(Batch.status)
                                          .where(Batch.id > first_batch)).scalars().all()
                task_runs = session.execute(sa.select(TaskRun.status)).scalars().all()
                session.commit()
            if (len(batches) >= 2 and all(b not in ("queued", "running") for b in batches)
                    and task_runs and all(t != "running" for t in task_runs)):
                finished = True
                break
        report.seconds_to_finish = time.monotonic() - started
        # A few more seconds of browsing after the work ends count as load too.
        time.sleep(2.0)
        stop.set()
        for t in browsers:
            t.join(timeout=35)
        idle = [s.seconds for s in samples if s.phase == "idle" and not s.error]
        busy = [s.seconds for s in samples if s.phase == "load" and not s.error]
        report.pages = _per_page(samples)
        report.requests = len(samples)
        report.idle_p50, report.idle_p95 = statistics.median(idle or [0.0]), _p(idle, 0.95)
        report.load_p50, report.load_p95 = statistics.median(busy or [0.0]), _p(busy, 0.95)
        report.errors += [f"{s.phase} {s.path}: {s.error}" for s in samples if s.error][:20]
        with app.app_context():
            session = get_state().session
            report.batches = [
                {"id": b.id, "by": b.triggered_by, "status": b.status, "done": b.done,
                 "failed": b.failed, "total": b.total}
                for b in session.execute(sa.select(Batch).where(Batch.id > first_batch))
                .scalars()
            ]
            for code, message in session.execute(
                sa.select(Run.error_code, Run.error_message)
                .where(Run.status == "failed", Run.id > first_run)
            ):
                report.run_failures[code or "?"] = report.run_failures.get(code or "?", 0) + 1
                if LOCKED in (message or ""):
                    report.lock_errors += 1
            report.leftover_leases = session.scalar(
                sa.select(sa.func.count()).select_from(Server)
                .where(Server.lease_owner.is_not(None))) or 0
            report.unfinished_runs = session.scalar(
                sa.select(sa.func.count()).select_from(Run)
                .where(Run.status.in_(("queued", "running")))) or 0
            session.commit()
        if not finished:
            report.problems.append(f"the batches did not finish within {load_seconds:.0f} s")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if sims is not None:
            sims.stop()
        with app.app_context():
            from ..state import get_state

            get_state().db.engine.dispose()
    log_text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    report.lock_errors += log_text.count(LOCKED)
    if report.errors:
        report.problems.append(f"{len(report.errors)} page error(s)")
    if report.lock_errors:
        report.problems.append(f"'{LOCKED}' {report.lock_errors} time(s)")
    if report.leftover_leases or report.unfinished_runs:
        report.problems.append(f"{report.leftover_leases} lease(s) and "
                               f"{report.unfinished_runs} unfinished run(s) left")
    bad = [b for b in report.batches if b["status"] != "finished" or b["done"] != b["total"]]
    if bad:
        report.problems.append(f"batches not finished in full: {bad}")
    healthy_failures = sum(report.run_failures.values()) - 2 * hostile_count
    if healthy_failures > 0:
        report.problems.append(f"{healthy_failures} run(s) failed beyond the hostile servers'")
    if report.idle_p95 and report.load_p95 > max_ratio * report.idle_p95:
        report.problems.append(f"p95 under load {report.load_p95 * 1000:.0f} ms is more than "
                               f"{max_ratio}x idle {report.idle_p95 * 1000:.0f} ms")
    if own_dir is not None:
        own_dir.cleanup()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database", help="SQLAlchemy URL (default: SQLite in a temp dir); "
                        "a PostgreSQL/MariaDB database is emptied first")
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--hostile", type=float, default=0.1, help="share of hostile servers")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--idle", type=float, default=15.0, help="seconds of idle browsing")
    parser.add_argument("--limit", type=float, default=180.0, help="seconds the load may take")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--lists", type=int, default=30, help="lists per simulated server")
    parser.add_argument("--max-ratio", type=float, default=2.0)
    parser.add_argument("--think", type=float, nargs=2, default=(0.5, 2.0),
                        metavar=("MIN", "MAX"),
                        help="seconds a user waits between two pages (uniform; 0.05 0.3 "
                        "saturates this 2-core machine before any validation)")
    parser.add_argument("--batches", choices=BATCHES_IN, default="process",
                        help="where the web workers' batches run: a process of their own "
                        "(LM_BILLING_BATCH_PROCESS_APP) or the workers' threads")
    # The simulators' own process (started by the run itself).
    parser.add_argument("--serve-simulators", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hostile-count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_simulators is not None:
        serve_simulators(args.serve_simulators, args.lists, args.hostile_count)
        return 0
    report = run_load(database=args.database, servers=args.servers, hostile_share=args.hostile,
                      users=args.users, idle_seconds=args.idle, load_seconds=args.limit,
                      workers=args.workers, threads=args.threads, lists=args.lists,
                      max_ratio=args.max_ratio, think=tuple(args.think),
                      batches_in=args.batches)
    print(json.dumps(report.as_dict(), indent=2, default=str))  # noqa: T201 - the CLI's output
    for path, page in report.pages.items():
        print(  # noqa: T201 - the CLI's output
            f"  {path:<34} idle p50 {page['idle_p50'] * 1000:4.0f} ms p95 "
            f"{page['idle_p95'] * 1000:4.0f} ms | under validation p50 "
            f"{page['load_p50'] * 1000:4.0f} ms p95 {page['load_p95'] * 1000:4.0f} ms")
    print(  # noqa: T201
        f"{report.database}, batches in {report.batches_in}: {report.servers} servers "
        f"({report.hostile} hostile), "
        f"{report.users} users, {report.requests} requests; page p95 idle "
        f"{report.idle_p95 * 1000:.0f} ms, under validation {report.load_p95 * 1000:.0f} ms; "
        f"{len(report.errors)} errors, {report.lock_errors} lock errors; work done in "
        f"{report.seconds_to_finish:.1f} s: {'OK' if not report.problems else report.problems}")
    return 0 if not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
