"""Performance figures for the plugin's hot paths, printed plainly for people to compare.

``python -m lm_billing_plugin.testing.benchmark`` runs every section;
``... benchmark codec`` runs one.
"""

from __future__ import annotations

import random
import sys
import timeit
from collections.abc import Callable, Sequence

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
