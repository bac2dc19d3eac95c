"""`python -m lm_billing_plugin.testing.bench_reports [--rounds N] [--servers N] [LISTS...]`:
times the Overview and the report pages on SQLite for fleets of 1,000 and 500,000 lists (this
month's usage on each, last month's, alike, on nine in ten): the minimum and median of N
rounds (default 5) a page, and their ratios. ``--servers N`` spreads every fleet over N
servers (and N customers), so the fleets differ in lists only; by default one server holds
up to 5,000 lists."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from ..engine.rollup import rebuild_list_counts, rebuild_rollups
from ..extension import LMBilling
from ..models import (
    Assignment,
    Base,
    BillingGroup,
    Customer,
    HostingPlan,
    MailingList,
    Server,
    Usage,
)
from ..reports.periods import add_months
from ..secrets import generate_key
from ..state import get_state

PAGES = (
    ("Overview", "/billing/overview"),
    ("Usage per server", "/billing/reports/usage?by=server"),
    ("Usage per list, sorted by messages", "/billing/reports/usage?by=list"),
    ("Usage per list, sorted by name", "/billing/reports/usage?by=list&sort=name&dir=asc"),
    ("Usage per list, sorted by name, last page",
     "/billing/reports/usage?by=list&sort=name&dir=asc&page=999999"),
    ("Usage per list, by units", "/billing/reports/usage?by=list&sort=units"),
    ("Usage per list, 2 months, by name", "/billing/reports/usage?by=list&sort=name&dir=asc"
     "&start={last}&end={this}"),
    ("Usage per list, 2 months, by name, last page", "/billing/reports/usage?by=list"
     "&sort=name&dir=asc&start={last}&end={this}&page=999999"),
    ("Usage per list, 2 months, by messages",
     "/billing/reports/usage?by=list&start={last}&end={this}"),
    ("Usage per list, 2 months, by messages, last page",
     "/billing/reports/usage?by=list&start={last}&end={this}&page=999999"),
    ("Usage per list, 2 months, by units",
     "/billing/reports/usage?by=list&sort=units&start={last}&end={this}"),
    ("Usage per site", "/billing/reports/usage?by=site"),
    ("Usage per customer", "/billing/reports/usage?by=customer"),
    ("Revenue", "/billing/reports/revenue"),
    ("Plan limits", "/billing/reports/limits"),
)
LISTS_PER_SERVER = 5000


def build(path: Path, lists: int, servers: int | None = None) -> Flask:
    """A fleet of ``lists`` lists on ``servers`` servers (default one per LISTS_PER_SERVER
    lists), a customer per server, half of them paying for their whole server under a plan
    whose list limit the server's lists reach (so Plan limits has rows at every size)."""
    app = Flask("bench_reports")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{path}", LM_BILLING_ALLOW_ALL=True,
                      LM_BILLING_ENCRYPTION_KEYS=[generate_key()], SECRET_KEY=generate_key(),
                      LM_BILLING_SCHEDULER_AUTOSTART=False)
    db = SQLAlchemy()
    db.init_app(app)
    LMBilling(app)
    month = datetime.now(UTC).date().replace(day=1)
    with app.app_context():
        Base.metadata.create_all(db.engine)
        s = get_state(app).session
        servers = servers or max(1, lists // LISTS_PER_SERVER)
        per_server = -(-lists // servers)
        plan = HostingPlan(name="Bench", max_lists=per_server, max_message_size_kb=100)
        s.add(plan)
        s.flush()
        for n in range(servers):
            server = Server(name=f"server{n:04d}", host="127.0.0.1", comments="")
            customer = Customer(company=f"Customer {n:04d}")
            s.add_all([server, customer])
            s.flush()
            group = BillingGroup(customer_id=customer.id, name="lists", plan_id=plan.id)
            s.add(group)
            s.flush()
            if n % 2 == 0:  # half the fleet is paid for by whole servers, half unowned
                s.add(Assignment(group_id=group.id, object_type="server", server_id=server.id,
                                 start_date=date(2020, 1, 1)))
            count = max(0, min(per_server, lists - n * per_server))
            s.execute(sa.insert(MailingList), [
                {"server_id": server.id, "name": f"list-{i:05d}", "site_name": f"site{i % 4}",
                 "members": i % 5000} for i in range(count)])
        s.flush()
        ids = s.execute(sa.select(MailingList.id, MailingList.server_id)).all()
        s.execute(sa.insert(Usage), [
            {"server_id": sid, "list_id": lid, "period": month, "messages": lid % 7,
             "recipients": lid % 700, "bytes": (lid % 700) * 40_000} for lid, sid in ids])
        # Last month too, for nine lists in ten, each 80-120 % of this month's figures (a list
        # that sends much keeps sending much; what the ranges' index merge relies on).
        s.execute(sa.insert(Usage), [
            {"server_id": sid, "list_id": lid, "period": add_months(month, -1),
             "messages": (lid % 7) * (80 + lid % 41) // 100,
             "recipients": (lid % 700) * (80 + lid % 41) // 100,
             "bytes": (lid % 700) * (80 + lid % 41) // 100 * 40_000}
            for lid, sid in ids if lid % 10])
        rebuild_rollups(s)  # what the syncs would have written with these rows
        rebuild_list_counts(s)
        s.commit()
    return app


def time_pages(app: Flask, rounds: int = 5) -> dict[str, tuple[float, float]]:
    """(minimum, median) in ms of ``rounds`` requests a page, after one to warm up."""
    client = app.test_client()
    this = datetime.now(UTC).date().replace(day=1)
    months = {"this": f"{this:%Y-%m}", "last": f"{add_months(this, -1):%Y-%m}"}
    out = {}
    for label, template in PAGES:
        url = template.format(**months)
        assert client.get(url).status_code == 200, url
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            response = client.get(url)
            response.get_data()
            samples.append(time.perf_counter() - start)
        out[label] = (min(samples) * 1000, statistics.median(samples) * 1000)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    rounds = 5
    if "--rounds" in args:
        at = args.index("--rounds")
        rounds = int(args[at + 1])
        del args[at:at + 2]
    servers = None
    if "--servers" in args:
        at = args.index("--servers")
        servers = int(args[at + 1])
        del args[at:at + 2]
    sizes = [int(a) for a in args] or [1000, 500_000]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            start = time.perf_counter()
            app = build(Path(tmp) / f"{size}.sqlite", size, servers)
            print(f"built {size:,} lists in {time.perf_counter() - start:.1f} s", flush=True)
            results[size] = time_pages(app, rounds)
            with app.app_context():
                get_state(app).db.engine.dispose()
    for k, what in ((1, f"median of {rounds}"), (0, f"minimum of {rounds}")):
        print(f"\n{'Page (' + what + ', ms)':40}" + "".join(f"{s:>14,}" for s in sizes)
              + ("       ratio" if len(sizes) > 1 else ""))
        for label, _url in PAGES:
            row = [results[s][label][k] for s in sizes]
            ratio = f"{row[-1] / row[0]:11.1f}x" if len(sizes) > 1 else ""
            print(f"{label:40}" + "".join(f"{v:14.1f}" for v in row) + " " + ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
