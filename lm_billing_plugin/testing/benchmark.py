"""Performance figures for the plugin's hot paths, printed plainly for people to compare.

``python -m lm_billing_plugin.testing.benchmark`` runs every section;
``... benchmark codec`` runs one.

One module on purpose: one script whose sections share the fleet, the floors and the table
they print (the report pages' figures are in bench_reports.py).
"""

from __future__ import annotations

import contextlib
import random
import sys
import timeit
from collections.abc import Callable, Sequence
from typing import Any, cast

from lm_billing_plugin.tclport import codec

# Each section prints its own lines.  Add a section by decorating a function with
# @section("name"); sections run in the order they are defined.
SECTIONS: list[tuple[str, Callable[[], None]]] = []


def section(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(func: Callable[[], None]) -> Callable[[], None]:
        SECTIONS.append((name, func))
        return func

    return register


def best_of(func: Callable[[], object], repeat: int = 7) -> float:
    """Seconds for one call, the best of ``repeat``: the least disturbed by the machine."""
    return min(timeit.repeat(func, number=1, repeat=repeat))


def race(funcs: dict[str, Callable[[], object]], rounds: int = 25) -> dict[str, float]:
    """Best seconds per call of each function, run in turns so that load from other work on
    the machine falls on all of them alike and the ratios stay fair."""
    best = dict.fromkeys(funcs, float("inf"))
    for _ in range(rounds):
        for name, func in funcs.items():
            best[name] = min(best[name], best_of(func, repeat=1))
    return best


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# --- codec -------------------------------------------------------------------------------

_WORDS = ["news", "sales", "team", "alerts", "weekly", "board", "dev", "ops", "club", "jobs"]
# Names a ListManager server really carries: spaces, braces (balanced or not), quotes,
# markup characters and non-ASCII letters, mixed into mostly plain names.
_ODD_NAMES = [
    "Sales Team {EU}", "odd { brace", 'say "hi"', "<b>&amp;</b>", "café-münchen", "東京-news",
    "a$b[c];d", "#general", "trailing\\", "😀 fans",
]


def lists_reply(count: int = 5000, seed: int = 2021) -> str:
    """A deterministic ``lists`` reply body: ``total N items {...}`` with ``count`` lists."""
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < count:
        if rng.random() < 0.15:
            names.add(f"{rng.choice(_ODD_NAMES)} {len(names)}")
        else:
            names.add(f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{len(names)}")
    items = []
    for name in sorted(names, key=lambda n: n.encode("utf-8")):
        items.append(
            codec.encode_dict(
                {
                    "name": name,
                    "site": rng.choice(["", "main", "sales dept", "École"]),
                    "descr": rng.choice(
                        [
                            "",
                            f"Announcements for {name}",
                            "Weekly digest; \"best of\" the week's posts",
                            "Line one\nLine two",
                            "Prices in $ and [brackets]",
                        ]
                    ),
                    "created": f"20{rng.randint(10, 25)}-{rng.randint(1, 12):02d}-"
                    f"{rng.randint(1, 28):02d}",
                    "members": str(rng.randint(0, 250_000)),
                    "admin": rng.choice(["", f"admin{rng.randint(1, 99)}@example.com"]),
                }
            )
        )
    return codec.encode_dict({"total": str(count), "items": codec.encode_list(items)})


def _reply_decoder(split: Callable[[str], Sequence[str]]) -> Callable[[str], list[list[str]]]:
    def decode(reply: str) -> list[list[str]]:
        outer = split(reply)
        fields = dict(zip(outer[::2], outer[1::2], strict=True))
        return [list(split(item)) for item in split(fields["items"])]

    return decode


@section("codec")
def bench_codec() -> None:
    count = 5000
    reply = lists_reply(count)
    size_mb = len(reply.encode("utf-8")) / 1e6
    label = f"codec decode {count}-list reply ({size_mb:.2f} MB)"

    ours = _reply_decoder(codec.decode_list)
    pure = _reply_decoder(codec.decode_list_py)
    expected = pure(reply)
    if ours(reply) != expected:
        raise SystemExit("decode_list and decode_list_py disagree on the benchmark reply")
    contenders: dict[str, Callable[[], object]] = {}
    try:
        import tkinter
    except ImportError:
        pass
    else:
        # The raw _tkinter app: tkinter.Tcl().splitlist would add a Python __getattr__ hop.
        raw = _reply_decoder(tkinter.Tcl().tk.splitlist)
        if raw(reply) != expected:
            raise SystemExit("Tcl's splitlist and decode_list_py disagree on the reply")
        contenders["tcl"] = lambda: raw(reply)
    contenders["ours"] = lambda: ours(reply)
    contenders["pure"] = lambda: pure(reply)
    best = race(contenders)
    t_ours, t_pure, t_tcl = best["ours"], best["pure"], best.get("tcl")

    def versus(t: float) -> str:
        return "" if t_tcl is None else f" ({t_tcl / t:.2f}x)"

    tcl_figures = "tcl n/a (no tkinter)" if t_tcl is None else f"tcl {_ms(t_tcl)}"
    print(
        f"{label}: {tcl_figures}, ours({codec.BACKEND}) {_ms(t_ours)}{versus(t_ours)}, "
        f"ours(python) {_ms(t_pure)}{versus(t_pure)}"
    )
    print(
        f"codec decode throughput: ours({codec.BACKEND}) {count / t_ours:,.0f} lists/s "
        f"{size_mb / t_ours:.1f} MB/s, ours(python) {count / t_pure:,.0f} lists/s "
        f"{size_mb / t_pure:.1f} MB/s"
    )

    rows = [dict(zip(row[::2], row[1::2], strict=True)) for row in expected]

    def encode() -> str:
        items = codec.encode_list([codec.encode_dict(row) for row in rows])
        return codec.encode_dict({"total": str(count), "items": items})

    if encode() != reply:
        raise SystemExit("encoding the decoded reply does not give the reply back")
    t_enc = best_of(encode)
    print(f"codec encode {count}-list reply: {_ms(t_enc)} ({count / t_enc:,.0f} lists/s)")


# --- engine ------------------------------------------------------------------------------


@section("engine")
def bench_engine() -> None:
    """Validate and sync through local simulators into SQLite: one big server, many small."""
    import tempfile
    import time
    from pathlib import Path

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.engine import batches
    from lm_billing_plugin.models import Base, Server
    from lm_billing_plugin.state import get_state
    from lm_billing_plugin.testing.simulator import Dataset, HostSim

    def timed(func: Callable[[], object]) -> float:
        started = time.perf_counter()
        func()
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        app = Flask("lm_billing_benchmark")
        app.config.update(
            TESTING=True,  # a measuring app, not a deployment: needs no secrets
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{Path(tmp) / 'bench.sqlite'}",
            LM_BILLING_SCHEDULER_AUTOSTART=False,
            LM_BILLING_MAX_PARALLEL=16,
        )
        SQLAlchemy().init_app(app)
        LMBilling(app)
        sims: list[HostSim] = []
        try:
            with app.app_context():
                session = get_state().session
                Base.metadata.create_all(get_state().db.engine)

                def add(name: str, sim: HostSim) -> int:
                    sims.append(sim.start())
                    server = Server(name=name, host=sim.host, port=sim.port)
                    session.add(server)
                    session.commit()
                    return server.id

                big = add("big", HostSim(Dataset.generate(sites=20, lists=10_000, seed=7)))
                t_validate = timed(lambda: batches.validate_servers([big], actor="benchmark"))
                t_sync = timed(lambda: batches.sync_servers([big], actor="benchmark"))
                t_again = timed(lambda: batches.sync_servers([big], actor="benchmark"))
                print(
                    f"engine 1 server x 10,000 lists (SQLite): validate {_ms(t_validate)}, "
                    f"first sync {_ms(t_sync)}, unchanged sync {_ms(t_again)}"
                )
                many = [
                    add(f"s{i:02d}", HostSim(Dataset.generate(sites=3, lists=200, seed=i)))
                    for i in range(50)
                ]
                t_validate = timed(lambda: batches.validate_servers(many, actor="benchmark"))
                t_sync = timed(lambda: batches.sync_servers(many, actor="benchmark"))
                t_again = timed(lambda: batches.sync_servers(many, actor="benchmark"))
                print(
                    f"engine 50 servers x 200 lists in parallel (SQLite, 16 at once): "
                    f"validate {_ms(t_validate)}, first sync {_ms(t_sync)}, "
                    f"unchanged sync {_ms(t_again)}"
                )
                get_state().db.engine.dispose()
        finally:
            for sim in sims:
                sim.stop()


# --- pages -------------------------------------------------------------------------------


@section("pages")
def bench_pages() -> None:
    """GET of the big Billing pages with the Flask test client on SQLite: ms per request,
    the median of a few (the first request, which compiles templates, is not counted)."""
    import secrets
    import statistics
    import tempfile
    import time
    from pathlib import Path

    import sqlalchemy as sa
    from flask import Flask
    from flask.testing import FlaskClient
    from flask_sqlalchemy import SQLAlchemy

    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.models import Base, MailingList, Problem, Server, Site
    from lm_billing_plugin.state import get_state

    def per_request(client: FlaskClient, url: str, rounds: int = 5) -> float:
        get = client.get
        first = get(url)
        if first.status_code != 200:
            raise SystemExit(f"{url}: HTTP {first.status_code}")
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            get(url).get_data()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    with tempfile.TemporaryDirectory() as tmp:
        app = Flask("lm_billing_benchmark_pages")
        app.config.update(
            TESTING=True,  # a measuring app, not a deployment: needs no encryption key
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{Path(tmp) / 'pages.sqlite'}",
            SECRET_KEY=secrets.token_hex(16),  # the session cookie of this run only
            LM_BILLING_SCHEDULER_AUTOSTART=False,
        )
        SQLAlchemy().init_app(app)
        LMBilling(app, permission_check=lambda user, action: True)
        with app.app_context():
            session = get_state().session
            Base.metadata.create_all(get_state().db.engine)
            session.execute(
                sa.insert(Server),
                [
                    {"name": f"server-{i:04d}", "host": f"lists{i}.example.com", "port": 2021,
                     "comments": f"rack {i % 17}", "version": f"12.{i % 4}"}
                    for i in range(1000)
                ],
            )
            big = session.scalar(sa.select(Server.id).where(Server.name == "server-0000"))
            session.execute(
                sa.insert(Site),
                [{"server_id": big, "name": f"site{i}", "title": f"Site {i}"} for i in range(20)],
            )
            session.execute(
                sa.insert(MailingList),
                [
                    {"server_id": big, "name": f"list-{i:05d}", "site_name": f"site{i % 20}",
                     "members": i * 7 % 5000}
                    for i in range(10_000)
                ],
            )
            server_ids = list(session.scalars(sa.select(Server.id)))
            session.execute(
                sa.insert(Problem),
                [
                    {"fingerprint": f"bench-{i}", "server_id": server_ids[i % len(server_ids)],
                     "kind": "unknown_list", "object_type": "list",
                     "object_name": f"list-{i:05d}", "detail": "not in billing", "data": {}}
                    for i in range(10_000)
                ],
            )
            session.commit()
        client = app.test_client()
        figures = {
            "Servers (1,000 servers) first page": "/billing/",
            "Servers sorted by open problems, page 7": "/billing/?sort=problems&dir=desc&page=7",
            "Errors (10,000 open problems) first page": "/billing/errors",
            "Errors sorted by object, page 50": "/billing/errors?sort=object&page=50",
            "server detail (10,000 lists) first page": f"/billing/servers/{big}",
            "server detail lists sorted by members, page 100":
                f"/billing/servers/{big}?sort=members&dir=desc&lpage=100",
        }
        for label, url in figures.items():
            print(f"pages {label}: {_ms(per_request(client, url))} per request")
        with app.app_context():
            get_state().db.engine.dispose()


# --- fleet -------------------------------------------------------------------------------
# The issue-15 benchmark: simulated hosting servers in separate processes (each reply after
# a fixed latency), the floors the network and the database set, and the plugin's own CLI
# in a child process per step (so wall, CPU and peak RSS are that command's alone).

FLEETS: dict[str, tuple[int, int]] = {
    "small": (10, 100),
    "medium": (50, 1_000),
    "large": (200, 2_500),
}
_SIM_PROCESSES = 4
_MODULE = "lm_billing_plugin.testing.benchmark"
_STATS_ENV = "LM_BILLING_BENCH_STATS"
_DB_ENV = "LM_BILLING_BENCH_DB"
# The hook for steps others add (a bill run, reports): name -> (CLI args, exit codes that
# count as success). Each runs after the built-in steps, against the same fleet.
EXTRA_STEPS: dict[str, tuple[list[str], tuple[int, ...]]] = {}
# Modules a `validate` must not import (start-up cost, see the README's "Speed").
_HEAVY_MODULES = ("alembic", "mako", "pygments", "weasyprint")


def bench_app() -> Any:
    """The host app the fleet benchmark's CLI steps run (``flask --app ...:bench_app``):
    the database from $LM_BILLING_BENCH_DB, statement and row counts to $LM_BILLING_BENCH_STATS."""
    import os
    import secrets as _secrets

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.secrets import generate_key

    app = Flask("lm_billing_bench")
    app.config.update(
        # A CLI-only app with no stored passwords, but the plugin refuses to start without.
        SECRET_KEY=_secrets.token_hex(16),
        LM_BILLING_ENCRYPTION_KEYS=[generate_key()],
        SQLALCHEMY_DATABASE_URI=os.environ[_DB_ENV],
        LM_BILLING_SCHEDULER_AUTOSTART=False,
        LM_BILLING_ALLOW_ALL=True,
    )
    for key, value in os.environ.items():
        if key.startswith("LM_BILLING_") and key not in (_DB_ENV, _STATS_ENV):
            app.config[key] = value
    SQLAlchemy().init_app(app)
    LMBilling(app)
    stats_path = os.environ.get(_STATS_ENV)
    if stats_path:
        _count_statements(stats_path)
    return app


def _count_statements(path: str) -> None:
    import atexit
    import json

    import sqlalchemy as sa

    counts = {"statements": 0, "rows_written": 0}

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts["statements"] += 1

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        verb = statement.lstrip()[:6].upper()
        if verb in ("INSERT", "UPDATE", "DELETE") and (cursor.rowcount or 0) > 0:
            counts["rows_written"] += cursor.rowcount

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", before)
    sa.event.listen(sa.engine.Engine, "after_cursor_execute", after)

    def dump() -> None:
        heavy = [m for m in _HEAVY_MODULES if m in sys.modules]
        # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss
        # across exec, so a big benchmark process would show in every child's figure.
        peak: dict[str, float] = {}
        with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as st:
            for line in st:
                if line.startswith("VmHWM:"):
                    peak["rss_mb"] = int(line.split()[1]) / 1024
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({**counts, **peak, "heavy_modules": heavy}, fh)

    atexit.register(dump)


def _sim_process(conn: Any, first: int, count: int, lists: int, latency: float) -> None:
    """A child process serving ``count`` simulated servers; obeys commands from ``conn``."""
    import random as _random

    from lm_billing_plugin.testing.simulator import Dataset, HostSim

    sims = [HostSim(Dataset.generate(sites=5, lists=lists, seed=first + i), latency=latency)
            for i in range(count)]
    conn.send([sim.start().port for sim in sims])
    try:
        while True:
            command, arg = conn.recv()
            if command == "change":
                # Change ``arg`` of every server's lists (their member count), reproducibly.
                changed = 0
                for i, sim in enumerate(sims):
                    rng = _random.Random(first + i)
                    for rec in rng.sample(sim.dataset.lists, max(1, int(lists * arg))):
                        sim.set_members(rec.name, rec.members + 1)
                        changed += 1
                conn.send(changed)
            elif command == "stop":
                break
    finally:
        for sim in sims:
            sim.stop()


class _Farm:
    """The simulated fleet, spread over a few processes."""

    def __init__(self, servers: int, lists: int, latency: float) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        self.ports: list[int] = []
        per = -(-servers // _SIM_PROCESSES)
        for first in range(0, servers, per):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_sim_process,
                               args=(there, first, min(per, servers - first), lists, latency),
                               daemon=True)
            proc.start()
            self.pipes.append(here)
            self.procs.append(proc)
        for pipe in self.pipes:
            self.ports.extend(pipe.recv())

    def change(self, fraction: float) -> int:
        for pipe in self.pipes:
            pipe.send(("change", fraction))
        return sum(pipe.recv() for pipe in self.pipes)

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def _parallel(func: Callable[[int], Any], ports: Sequence[int], workers: int) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(func, ports))


def _measure(func: Callable[[], Any]) -> tuple[dict[str, float], Any]:
    import time

    wall, cpu = time.perf_counter(), time.process_time()
    result = func()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}, result


def _fetch_floor(ports: Sequence[int], workers: int) -> tuple[dict[str, float], list[str]]:
    """Fetch and decode every inventory with our client, ``workers`` at once; also keep
    each server's raw ``lists`` replies for the decode floor."""
    import time

    from lm_billing_plugin.engine.inventory import fetch_inventory
    from lm_billing_plugin.tclport.client import DEFAULT_PASSWORD, ClientSettings, TclPortClient

    settings = ClientSettings()

    def fetch(port: int) -> int:
        inv = fetch_inventory("127.0.0.1", port, DEFAULT_PASSWORD, name=str(port),
                              settings=settings, deadline=time.monotonic() + 300)
        return len(inv.lists)

    figures, counts = _measure(lambda: _parallel(fetch, ports, workers))
    figures["lists"] = float(sum(counts))

    def raw(port: int) -> list[str]:
        client = TclPortClient("127.0.0.1", port, DEFAULT_PASSWORD, settings=settings)
        out: list[str] = []
        with client.connect():
            offset = 0
            while True:
                reply = client.call("lists", str(offset), str(settings.page_size))
                out.append(reply)
                got = len(codec.decode_list(codec.decode_dict(reply)["items"]))
                offset += got
                if got < settings.page_size:
                    return out

    replies = [r for rs in _parallel(raw, ports, workers) for r in rs]
    return figures, replies


def _decode_floor(replies: Sequence[str]) -> dict[str, float]:
    import tkinter

    split = _reply_decoder(tkinter.Tcl().splitlist)
    figures, _ = _measure(lambda: [split(r) for r in replies])
    return figures


def _write_floor(url: str, replies: Sequence[str], per_server: int) -> dict[str, float]:
    """A bare Core executemany insert of the same list rows into a scratch table of the same
    database, one transaction per server's worth of rows."""
    import tkinter
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from lm_billing_plugin.models import MailingList

    split = _reply_decoder(tkinter.Tcl().splitlist)
    rows = []
    for reply in replies:
        for item in split(reply):
            d = dict(zip(item[::2], item[1::2], strict=True))
            rows.append({"server_id": 1, "name": d["name"], "site_name": d["site"],
                         "descr": d["descr"], "members": int(d["members"]),
                         "admin": d["admin"], "status": "active"})
    now = datetime.now(UTC).replace(tzinfo=None)
    meta = sa.MetaData()
    source = cast(sa.Table, MailingList.__table__)
    table = sa.Table("bench_write_floor", meta,
                     *[sa.Column(c.name, sa.DateTime() if c.name.endswith("_at") else c.type,
                                 primary_key=c.primary_key) for c in source.columns])
    for row in rows:
        row["first_seen_at"] = row["last_seen_at"] = now
    engine = sa.create_engine(url)
    try:
        meta.drop_all(engine)
        meta.create_all(engine)

        def write() -> None:
            for start in range(0, len(rows), per_server):
                with engine.begin() as conn:
                    conn.execute(table.insert(), rows[start:start + per_server])

        figures, _ = _measure(write)
        figures["rows_written"] = float(len(rows))
        meta.drop_all(engine)
    finally:
        engine.dispose()
    return figures


def _fresh_database(url: str, servers: Sequence[tuple[str, int]]) -> None:
    import sqlalchemy as sa

    from lm_billing_plugin.models import Base, Server

    engine = sa.create_engine(url)
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            if servers:
                conn.execute(sa.insert(Server), [
                    {"name": name, "host": "127.0.0.1", "port": port} for name, port in servers])
    finally:
        engine.dispose()


_RUNNER = (
    "import sys\n"
    f"from {_MODULE} import bench_app\n"
    "result = bench_app().test_cli_runner().invoke(args=['lm-billing', *sys.argv[1:]])\n"
    "sys.exit(result.exit_code)\n"
)


def _cli(url: str, args: Sequence[str], ok: Sequence[int],
         env: dict[str, str] | None = None, *, runner: bool = False) -> dict[str, Any]:
    """One `flask lm-billing ...` in a child process: wall, CPU, peak RSS, statements."""
    import json
    import os
    import subprocess
    import tempfile
    import time

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        stats_path = fh.name
    child_env = dict(os.environ, **(env or {}))
    child_env.update({_DB_ENV: url, _STATS_ENV: stats_path})
    started = time.perf_counter()
    # Our own interpreter and module, with fixed arguments: nothing untrusted goes in.
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", _RUNNER, *args] if runner else
        [sys.executable, "-m", "flask", "--app", f"{_MODULE}:bench_app", "lm-billing", *args],
        env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Exit 1 is also "problems are open", so a crash (a traceback, exit 1) is told by its output.
    if proc.returncode not in ok or b"Traceback (most recent call last)" in err:
        raise SystemExit(f"lm-billing {' '.join(args)} exited {proc.returncode}:\n"
                         f"{err.decode(errors='replace')[-3000:]}")
    try:
        with open(stats_path, encoding="utf-8") as fh:
            stats = json.loads(fh.read() or "null")
    finally:
        os.unlink(stats_path)
    if stats is None:  # it stopped before the app was made (exit 1 is also "problems")
        raise SystemExit(f"lm-billing {' '.join(args)} failed:\n"
                         f"{err.decode(errors='replace')[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "exit": proc.returncode, **stats}  # VmHWM wins


STARTUP_RUNS = 5


def _startup(url: str, *, runner: bool = False) -> dict[str, Any]:
    """`servers list` on an empty database, STARTUP_RUNS times: the run of median wall time
    (one start-up on a shared machine varies by 2x), with the fastest wall beside it."""
    runs = sorted((_cli(url, ["servers", "list"], (0,), runner=runner)
                   for _ in range(STARTUP_RUNS)), key=lambda step: step["wall"])
    return {**runs[len(runs) // 2], "wall_min": runs[0]["wall"], "runs": len(runs)}


def _dead_server() -> Any:
    """A port that accepts connections and never answers (a hung server)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def fleet_size(fleet: str) -> tuple[int, int]:
    """(servers, lists per server) of a named fleet, or of one written ``SERVERSxLISTS``
    (``LM_BILLING_BENCH_FLEETS=200x500``: a reduced large fleet where the full one would
    take too long)."""
    if fleet in FLEETS:
        return FLEETS[fleet]
    servers, sep, lists = fleet.partition("x")
    if not (sep and servers.isdigit() and lists.isdigit() and int(servers) and int(lists)):
        raise SystemExit(f"unknown fleet {fleet!r}: name one of {', '.join(FLEETS)} "
                         "or give SERVERSxLISTS, e.g. 200x500")
    return int(servers), int(lists)


def _fleet_run(fleet: str, db_name: str, url: str, latency: float,
               workers: int) -> dict[str, Any]:
    servers, lists = fleet_size(fleet)
    print(f"fleet {fleet} ({servers} servers x {lists:,} lists), {db_name}: starting "
          "simulators ...", flush=True)
    farm = _Farm(servers, lists, latency)
    out: dict[str, Any] = {"fleet": fleet, "servers": servers, "lists_per_server": lists,
                           "database": db_name, "latency": latency, "parallel": workers}
    steps: dict[str, dict[str, Any]] = {}
    try:
        fetch, replies = _fetch_floor(farm.ports, workers)
        steps["fetch floor"] = fetch
        steps["decode floor"] = _decode_floor(replies)
        steps["write floor"] = _write_floor(url, replies, lists)
        del replies
        names = [(f"server-{i:04d}", port) for i, port in enumerate(farm.ports)]
        _fresh_database(url, [])
        steps["start-up (servers list, empty db)"] = _startup(url)
        # The same without `flask`'s loading of every installed package's CLI plugins (e.g.
        # Flask-AppBuilder's `fab` costs about 0.7 s): the plugin's own share.
        steps["start-up, plugin only"] = _startup(url, runner=True)
        _fresh_database(url, names)
        env = {"LM_BILLING_MAX_PARALLEL": str(workers)}
        plan: list[tuple[str, list[str], tuple[int, ...]]] = [
            ("validate --all", ["validate", "--all"], (0, 1)),
            ("first sync --all", ["sync", "--all"], (0, 1)),
            ("re-validate unchanged", ["validate", "--all"], (0, 1)),
            ("re-sync unchanged", ["sync", "--all"], (0, 1)),
        ]
        for label, args, ok in plan:
            print(f"  {label} ...", flush=True)
            steps[label] = _cli(url, args, ok, env)
        # 1 % of the lists change: validate sees it, fix --all applies it; then another 1 %
        # changes and a sync applies that.
        changed = farm.change(0.01)
        print("  re-validate 1% changed ...", flush=True)
        steps["re-validate 1% changed"] = _cli(url, ["validate", "--all"], (0, 1), env)
        steps["re-validate 1% changed"]["lists_changed"] = changed
        print("  fix --all ...", flush=True)
        steps["fix --all (after 1% changed)"] = _cli(url, ["fix", "--all"], (0, 1, 2), env)
        changed = farm.change(0.01)
        print("  re-sync 1% changed ...", flush=True)
        steps["re-sync 1% changed"] = _cli(url, ["sync", "--all"], (0, 1), env)
        steps["re-sync 1% changed"]["lists_changed"] = changed
        for label, (args, ok) in EXTRA_STEPS.items():
            steps[label] = _cli(url, args, ok, env)
        dead = _dead_server()
        try:
            import sqlalchemy as sa

            from lm_billing_plugin.models import Server

            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.insert(Server), [{"name": "zz-dead", "host": "127.0.0.1",
                                                  "port": dead.getsockname()[1]}])
            engine.dispose()
            deadline = 5.0
            print("  validate --all, one dead server ...", flush=True)
            steps["validate, 1 dead server"] = _cli(
                url, ["validate", "--all"], (2,),
                dict(env, LM_BILLING_SERVER_DEADLINE=str(deadline)))
            steps["validate, 1 dead server"]["deadline"] = deadline
        finally:
            dead.close()
    finally:
        farm.stop()
    for step in steps.values():
        if "statements" in step:
            step["statements_per_server"] = step["statements"] / servers
    floor = steps["fetch floor"]["wall"]
    write = steps["write floor"]["wall"]
    for label, step in steps.items():
        if label.endswith("floor") or label.startswith("start-up"):
            continue
        step["x_fetch_floor"] = step["wall"] / floor
        step["x_fetch_plus_write_floor"] = step["wall"] / (floor + write)
    out["steps"] = steps
    return out


def _pages_run(db_name: str, url: str) -> dict[str, Any]:
    """The Servers page and a server's detail page, small fleet versus big."""
    import secrets as _secrets
    import statistics
    import time

    import sqlalchemy as sa
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.models import Base, MailingList, Server, Site
    from lm_billing_plugin.secrets import generate_key
    from lm_billing_plugin.state import get_state

    def build(servers: int, lists: int) -> tuple[Any, int]:
        app = Flask("lm_billing_bench_pages")
        app.config.update(SQLALCHEMY_DATABASE_URI=url, SECRET_KEY=_secrets.token_hex(16),
                          LM_BILLING_ENCRYPTION_KEYS=[generate_key()],
                          LM_BILLING_SCHEDULER_AUTOSTART=False)
        SQLAlchemy().init_app(app)
        LMBilling(app, permission_check=lambda user, action: True)
        with app.app_context():
            engine = get_state().db.engine
            Base.metadata.drop_all(engine)
            Base.metadata.create_all(engine)
            session = get_state().session
            session.execute(sa.insert(Server), [
                {"name": f"server-{i:04d}", "host": f"lists{i}.example.com", "port": 2021}
                for i in range(servers)])
            big = session.scalar(sa.select(Server.id).where(Server.name == "server-0000"))
            session.execute(sa.insert(Site), [
                {"server_id": big, "name": f"site{i}", "title": f"Site {i}"} for i in range(20)])
            session.execute(sa.insert(MailingList), [
                {"server_id": big, "name": f"list-{i:05d}", "site_name": f"site{i % 20}",
                 "members": i * 7 % 5000} for i in range(lists)])
            session.commit()
        return app, int(big or 0)

    def per_request(app: Any, url_: str) -> float:
        client = app.test_client()
        if client.get(url_).status_code != 200:
            raise SystemExit(f"{url_}: not 200")
        times = []
        for _ in range(5):
            started = time.perf_counter()
            client.get(url_).get_data()
            times.append(time.perf_counter() - started)
        with app.app_context():
            get_state().db.engine.dispose()
        return statistics.median(times)

    out: dict[str, Any] = {}
    for size, (servers, lists) in {"small": (10, 100), "big": (1000, 10_000)}.items():
        app, big = build(servers, lists)
        out[f"Servers page ({size})"] = per_request(app, "/billing/")
        out[f"server detail ({size})"] = per_request(app, f"/billing/servers/{big}")
    out["Servers page ratio"] = out["Servers page (big)"] / out["Servers page (small)"]
    out["server detail ratio"] = out["server detail (big)"] / out["server detail (small)"]
    print(f"pages, {db_name}: " + ", ".join(
        f"{k} {v * 1000:.1f} ms" if "ratio" not in k else f"{k} {v:.2f}x"
        for k, v in out.items()), flush=True)
    return out


def _databases() -> dict[str, str]:
    import os
    import tempfile

    out = {"sqlite": f"sqlite:///{tempfile.mkdtemp(prefix='lmb-bench-')}/fleet.sqlite"}
    pg = os.environ.get("LM_BILLING_BENCH_POSTGRES_URL") or os.environ.get(
        "LM_BILLING_TEST_POSTGRES_URL")
    if pg:
        out["postgresql"] = pg
    return out


def _print_table(run: dict[str, Any]) -> None:
    print(f"\nfleet {run['fleet']}: {run['servers']} servers x {run['lists_per_server']:,} lists, "
          f"{run['database']}, {run['latency'] * 1000:.0f} ms per reply, "
          f"{run['parallel']} at once")
    head = (f"{'step':36} {'wall s':>8} {'cpu s':>7} {'x fetch':>8} {'x f+w':>6} "
            f"{'SQL/srv':>8} {'rows':>9} {'RSS MB':>7}")
    print(head)
    print("-" * len(head))
    for label, s in run["steps"].items():
        def fmt(key: str, spec: str, s: dict[str, Any] = s) -> str:
            return format(s[key], spec) if key in s else format("-", spec[:2] + "s")
        print(f"{label:36} {s['wall']:>8.2f} {s['cpu']:>7.2f} {fmt('x_fetch_floor', '>8.2f')} "
              f"{fmt('x_fetch_plus_write_floor', '>6.2f')} "
              f"{fmt('statements_per_server', '>8.1f')} "
              f"{int(s.get('rows_written', 0)):>9,} {fmt('rss_mb', '>7.0f')}")
    startups = [(label, s) for label, s in run["steps"].items() if "wall_min" in s]
    if startups:
        print(f"start-up rows: the median of {startups[0][1]['runs']} runs; fastest "
              + ", ".join(f"{s['wall_min']:.2f} s ({label})" for label, s in startups))
    heavy = run["steps"]["validate --all"].get("heavy_modules", [])
    print(f"modules a validate imported of {', '.join(_HEAVY_MODULES)}: "
          f"{', '.join(heavy) or 'none'}")


def _compile_package() -> None:
    """Byte-compile the plugin once, as installing its wheel does: a checkout run with
    PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module from source in every
    step's process (0.2-0.3 s a step here), which no installed deployment pays."""
    import compileall
    from pathlib import Path

    import lm_billing_plugin

    compileall.compile_dir(str(Path(lm_billing_plugin.__file__).parent), quiet=1)


def fleet_main(fleets: Sequence[str], latency: float = 0.02, workers: int = 16,
               json_path: str | None = None) -> dict[str, Any]:
    import json
    import os
    import platform

    _compile_package()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "runs": [], "pages": {},
    }
    for db_name, url in _databases().items():
        for fleet in fleets:
            run = _fleet_run(fleet, db_name, url, latency, workers)
            results["runs"].append(run)
            _print_table(run)
        results["pages"][db_name] = _pages_run(db_name, url)
    path = json_path or f"bench-results/fleet-{'-'.join(fleets)}.json"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    print(f"\nfigures written to {path}")
    return results


@section("fleet")
def bench_fleet() -> None:
    """Small and medium fleets (``make bench``); the large one is ``make bench-large``."""
    import os

    fleets = os.environ.get("LM_BILLING_BENCH_FLEETS", "small,medium").split(",")
    fleet_main([f.strip() for f in fleets if f.strip()])


# --- bill run ----------------------------------------------------------------------------

# 1,000 customers x 10 lists on 20 simulated servers (50 customers a server); then the same
# customers with 2 lists each: the statements per customer must not grow with the lists.
BILL_SERVERS = 20
BILL_CUSTOMERS = 1_000
BILL_LISTS_PER_CUSTOMER = (10, 2)
BILL_PERIOD = ("2026-01-01", "2026-01-31")


def _bill_catalog(url: str, customers: int, lists_per_customer: int, stride: int) -> None:
    """Replace the catalog with ``customers`` customers, one group on one plan each, paying for
    ``lists_per_customer`` of their server's lists (customer k on server k mod servers)."""
    from datetime import date

    import sqlalchemy as sa

    from lm_billing_plugin import models as m

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(m.ChargeAssignment).values(invoice_id=None))
            for table in (m.InvoiceUsage, m.InvoiceLine, m.BillRunItem, m.Invoice, m.BillRun,
                          m.Assignment, m.GroupPlan, m.BillingGroup, m.Customer,
                          m.HostingPlan):
                conn.execute(sa.delete(table))
            conn.execute(sa.insert(m.HostingPlan).values(
                name="Standard", name_key="standard", billing_method="standard",
                monthly_price=30, included_messages=1000, overage_cpm=2))
            plan_id = conn.scalar(sa.select(m.HostingPlan.id))
            conn.execute(sa.insert(m.Customer), [
                {"company": f"Customer {k:04d}", "email": f"bills{k}@example.com",
                 "payment_method": "Invoice"} for k in range(customers)])
            cids = list(conn.scalars(sa.select(m.Customer.id).order_by(m.Customer.id)))
            conn.execute(sa.insert(m.BillingGroup), [
                {"customer_id": cid, "name": "Main", "name_key": "main", "plan_id": plan_id}
                for cid in cids])
            gids = list(conn.scalars(sa.select(m.BillingGroup.id).order_by(m.BillingGroup.id)))
            start = date(2025, 12, 1)
            conn.execute(sa.insert(m.GroupPlan), [
                {"group_id": gid, "plan_id": plan_id, "start_date": start} for gid in gids])
            servers = list(conn.scalars(sa.select(m.Server.id).order_by(m.Server.id)))
            lists: dict[int, list[int]] = {sid: [] for sid in servers}
            for sid, lid in conn.execute(sa.select(m.MailingList.server_id, m.MailingList.id)
                                         .order_by(m.MailingList.id)):
                lists[sid].append(lid)
            rows = []
            for k, gid in enumerate(gids):
                sid = servers[k % len(servers)]
                first = (k // len(servers)) * stride
                for lid in lists[sid][first:first + lists_per_customer]:
                    rows.append({"group_id": gid, "object_type": "list", "server_id": sid,
                                 "list_id": lid, "start_date": start})
            conn.execute(sa.insert(m.Assignment), rows)
    finally:
        engine.dispose()


def _bills_run(db_name: str, url: str, latency: float, workers: int) -> dict[str, Any]:
    servers, customers = BILL_SERVERS, BILL_CUSTOMERS
    widest = max(BILL_LISTS_PER_CUSTOMER)
    per_server = customers * widest // servers
    print(f"bill run, {db_name}: {customers:,} customers on {servers} servers x "
          f"{per_server} lists: starting simulators ...", flush=True)
    farm = _Farm(servers, per_server, latency)
    env = {"LM_BILLING_MAX_PARALLEL": str(workers)}
    out: dict[str, Any] = {"database": db_name, "servers": servers, "customers": customers,
                           "latency": latency, "steps": {}}
    try:
        _fresh_database(url, [(f"server-{i:04d}", port) for i, port in enumerate(farm.ports)])
        out["steps"]["sync --all (billing's view)"] = _cli(url, ["sync", "--all"], (0, 1), env)
        for per in BILL_LISTS_PER_CUSTOMER:
            _bill_catalog(url, customers, per, widest)
            label = f"bills run, {customers:,} x {per} lists"
            print(f"  {label} ...", flush=True)
            step = _cli(url, ["bills", "run", "--start", BILL_PERIOD[0], "--end",
                              BILL_PERIOD[1]], (0,), env)
            step["lists_per_customer"] = per
            step["statements_per_customer"] = step["statements"] / customers
            step["ms_per_customer"] = step["wall"] * 1000 / customers
            out["steps"][label] = step
    finally:
        farm.stop()
    return out


def _print_bills(run: dict[str, Any]) -> None:
    print(f"\nbill run: {run['customers']:,} customers on {run['servers']} servers, "
          f"{run['database']}, {run['latency'] * 1000:.0f} ms per reply")
    head = (f"{'step':32} {'wall s':>7} {'cpu s':>6} {'ms/cust':>8} {'SQL/cust':>9} "
            f"{'rows':>8} {'RSS MB':>7}")
    print(head)
    print("-" * len(head))
    for label, st in run["steps"].items():
        per = st.get("ms_per_customer")
        sql = st.get("statements_per_customer")
        print(f"{label:32} {st['wall']:>7.2f} {st['cpu']:>6.2f} "
              f"{format(per, '>8.1f') if per is not None else format('-', '>8s')} "
              f"{format(sql, '>9.2f') if sql is not None else format('-', '>9s')} "
              f"{int(st.get('rows_written', 0)):>8,} {st.get('rss_mb', 0):>7.0f}")


@section("bills")
def bench_bills() -> None:
    """A bill run of a month: 1,000 customers x 10 (then 2) lists on 20 simulated servers."""
    import json
    import os

    results = []
    for db_name, url in _databases().items():
        run = _bills_run(db_name, url, latency=0.02, workers=16)
        results.append(run)
        _print_bills(run)
    os.makedirs("bench-results", exist_ok=True)
    with open("bench-results/bills.json", "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    print("\nfigures written to bench-results/bills.json")


@section("reports")
def bench_reports_section() -> None:
    """The Overview and report pages at 1,000 and 500,000 lists (issue 12): minimum and
    median of 10 rounds a page, and the ratio (``python -m ...testing.bench_reports``) —
    once with a server per 5,000 lists (1 server against 100), once with both fleets on 100
    servers (the lists alone differ)."""
    from . import bench_reports

    bench_reports.main(["--rounds", "10"])
    print("\nBoth fleets on 100 servers:")
    bench_reports.main(["--rounds", "10", "--servers", "100"])


# --- entry point -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    wanted = list(sys.argv[1:] if argv is None else argv)
    known = dict(SECTIONS)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}; sections: {', '.join(known)}",
              file=sys.stderr)
        return 2
    for name, func in SECTIONS:
        if not wanted or name in wanted:
            func()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
