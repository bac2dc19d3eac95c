"""`python -m lm_billing_plugin.demo`: the demo portal with three simulated hosting servers
(healthy, Enable Logging off, refusing this billing server), registered and checked at start."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import FrameType

import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import make_server

from ..engine import servers as registry
from ..migrate import upgrade
from ..models import BillingGroup, Customer, HostingPlan, Server, TaskState, utcnow
from ..schedule.claims import TASK
from ..state import get_state
from ..tclport.records import LOGGING_LISTS, LOGGING_NO, ListRecord, SiteRecord
from ..testing.simulator import Dataset, HostSim, SendLogEntry, _seed_people
from . import DEMO_ACCOUNTS, DEMO_PASSWORD, create_app

log = logging.getLogger("lm_billing_plugin.demo")

ACTOR = "demo-launcher"
DEFAULT_PORT = 5000
PORT_ENV = "LM_BILLING_DEMO_PORT"
# The refusing server allows only this documentation address (RFC 5737), not 127.0.0.1.
FOREIGN_BILLING_IP = "192.0.2.10"

# Names that show escaping and exact, byte-for-byte names on the pages.
SPECIAL_LISTS = (
    ("<script>alert(1)</script>", "A hostile list name: the pages show it as text."),
    ("Zürich Vereinsnachrichten", "Non-ASCII list name."),
    ("日本語ニュース", "Japanese list name."),
    ("Tom & Jerry {fans}", "Ampersand and braces."),
)
_TOPICS = (
    "announce",
    "news",
    "weekly",
    "digest",
    "support",
    "offers",
    "events",
    "press",
    "members",
    "alerts",
    "updates",
    "community",
    "partners",
    "jobs",
    "research",
)
_BRANDS = (
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "vandelay",
    "stark",
    "wayne",
    "tyrell",
    "cyberdyne",
    "soylent",
    "oscorp",
    "wonka",
    "gringotts",
    "aperture",
    "blackmesa",
    "monarch",
    "massive",
    "dunder",
    "pawnee",
)


@dataclass(frozen=True)
class DemoServer:
    name: str
    comments: str
    sim: HostSim


def _healthy_dataset(today: date, seed: int = 2026) -> Dataset:
    """A few hundred lists on several sites, mailings logged this month."""
    rng = random.Random(seed)
    sites = [
        SiteRecord("news.example.com", "Example News"),
        SiteRecord("shop.example.org", "Example Shop"),
        SiteRecord("verein.example.ch", "Verein Zürich"),
        SiteRecord("lists.example.net", "Community Lists"),
    ]
    names = [f"{brand}-{topic}" for brand in _BRANDS for topic in _TOPICS]
    rng.shuffle(names)
    records: list[tuple[str, str]] = [(n, "") for n in names[:296]]
    records += list(SPECIAL_LISTS)
    lists: list[ListRecord] = []
    log_entries: list[SendLogEntry] = []
    month_start = today.replace(day=1)
    for i, (name, descr) in enumerate(records):
        site = "" if i % 40 == 39 else sites[i % len(sites)].name
        members = rng.randint(10, 4000)
        lists.append(
            ListRecord(
                name=name,
                site=site,
                descr=descr or name.replace("-", " ").title(),
                created=date(2020, 1, 1) + timedelta(days=rng.randint(0, 2000)),
                members=members,
                admin=f"{name.split('-')[0]}@example.com" if name.isascii() else "",
            )
        )
        if site == sites[0].name:
            # Last month's mailings of Acme's site, so a bill run of last month has usage.
            last_month = (month_start - timedelta(days=1)).replace(day=1)
            for _ in range(rng.randint(1, 2)):
                log_entries.append(SendLogEntry(
                    list=name, site=site, day=last_month + timedelta(days=rng.randint(0, 27)),
                    recipients=rng.randint(1, members), bytes=rng.randint(2_000, 60_000)))
        if rng.random() < 0.6:
            for _ in range(rng.randint(1, 3)):
                log_entries.append(
                    SendLogEntry(
                        list=name,
                        site=site,
                        day=month_start + timedelta(days=rng.randint(0, today.day - 1)),
                        recipients=rng.randint(1, members),
                        bytes=rng.randint(2_000, 120_000),
                    )
                )
    # Members and admin names as the simulator seeds them, so Find Member and Find
    # Administrator have people to find (pat.jones@example.org is on several lists).
    people, admin_names = _seed_people(lists, seed)
    return Dataset(
        members=people,
        admin_names=admin_names,
        sites=sites,
        lists=lists,
        log=log_entries,
        logging_mode=LOGGING_LISTS,
        version="12.3",
        hostname="lm1.example.com",
        started=datetime.now(UTC).replace(microsecond=0),
    )


def _small_dataset(prefix: str, hostname: str, version: str, count: int) -> Dataset:
    rng = random.Random(prefix)
    site = SiteRecord(f"{prefix}.example.com", f"{prefix.title()} Lists")
    lists = [
        ListRecord(
            name=f"{prefix}-{topic}",
            site=site.name,
            descr=f"{prefix.title()} {topic}",
            created=date(2021, 6, 1),
            members=rng.randint(5, 900),
            admin=f"owner@{prefix}.example.com",
        )
        for topic in _TOPICS[:count]
    ]
    people, admin_names = _seed_people(lists, len(prefix))
    return Dataset(
        members=people,
        admin_names=admin_names,
        sites=[site],
        lists=lists,
        logging_mode=LOGGING_NO,
        version=version,
        hostname=hostname,
        started=datetime.now(UTC).replace(microsecond=0),
    )


def start_simulators(today: date | None = None) -> list[DemoServer]:
    """Start the three simulated hosting servers on free ports of 127.0.0.1."""
    today = today or datetime.now(UTC).date()
    quiet = _small_dataset("quiet", "lm2.example.com", "10.2b", 12)
    walled = _small_dataset("walled", "lm3.example.com", "12.1", 8)
    walled.logging_mode = LOGGING_LISTS
    plan = [
        (
            "Demo: healthy",
            "Simulated: about 300 lists on 4 sites, Enable Logging on.",
            HostSim(_healthy_dataset(today)),
        ),
        (
            "Demo: logging off",
            "Simulated: Enable Logging is No; billing cannot count its mail.",
            HostSim(quiet),
        ),
        (
            "Demo: refuses billing",
            "Simulated: 127.0.0.1 is not in its TCLPORT Hosts (HOST_DENIED).",
            HostSim(walled, allowed_hosts=[FOREIGN_BILLING_IP]),
        ),
    ]
    started: list[DemoServer] = []
    try:
        for name, comments, sim in plan:
            sim.start()
            started.append(DemoServer(name, comments, sim))
    except BaseException:
        stop_simulators(started)
        raise
    return started


def stop_simulators(demo_servers: Sequence[DemoServer]) -> None:
    for demo in demo_servers:
        with contextlib.suppress(Exception):
            demo.sim.stop()


def register(app: Flask, demo_servers: Sequence[DemoServer]) -> None:
    """Put the simulated servers in the demo database (idempotent: existing rows keep their
    id and history, only host and port move), check each once, and add a demo customer."""
    with app.app_context():
        session = get_state().session
        for demo in demo_servers:
            existing = session.scalars(sa.select(Server).where(Server.name == demo.name)).first()
            if existing is None:
                server = registry.create_server(
                    demo.name, demo.sim.host, demo.sim.port, demo.comments, actor=ACTOR
                )
            else:
                # The simulators get new ports each start; the host (127.0.0.1) stays.
                existing.active = True
                session.commit()
                server = registry.update_server(
                    existing.id,
                    host=demo.sim.host,
                    port=demo.sim.port,
                    comments=demo.comments,
                    keep_password=True,
                    actor=ACTOR,
                )
            registry.check_server(server.id, actor=ACTOR)
        _demo_billing(app)
        _defer_scheduled_validation(app)


def _defer_scheduled_validation(app: Flask) -> None:
    """Let the person validate by hand first: the background validation's first run comes
    one interval (LM_BILLING_VALIDATE_INTERVAL) after the launch, not on the first request."""
    state = get_state(app)
    session = state.session
    later = utcnow() + timedelta(seconds=state.settings.validate_interval)
    task = session.get(TaskState, TASK)
    if task is None:
        session.add(TaskState(name=TASK, next_run_at=later))
    elif task.lease_owner is None and task.next_run_at < later:
        task.next_run_at = later
    session.commit()


def _demo_billing(app: Flask) -> None:
    """A customer, a hosting plan and a billing group, so "assign an owner" has a choice."""
    session = get_state(app).session
    plan = session.scalars(sa.select(HostingPlan).where(HostingPlan.name == "Standard")).first()
    if plan is None:
        plan = HostingPlan(
            name="Standard",
            description="Demo plan: up to 50 lists of 5,000 members each.",
            max_lists=50,
            max_members_per_list=5000,
            monthly_price=Decimal("49.00"),
            included_messages=20_000,
            overage_cpm=Decimal("1.5000"),
        )
        session.add(plan)
        session.flush()
    customer = session.scalars(
        sa.select(Customer).where(Customer.company == "Acme Publishing")
    ).first()
    if customer is None:
        customer = Customer(
            company="Acme Publishing", contact_name="Ada Example", email="ada@example.com"
        )
        session.add(customer)
        session.flush()
    group = session.scalars(
        sa.select(BillingGroup).where(BillingGroup.customer_id == customer.id)
    ).first()
    if group is None:
        session.add(
            BillingGroup(
                customer_id=customer.id,
                name="Acme newsletters",
                plan_id=plan.id,
                plan_start=datetime.now(UTC).date().replace(day=1),
            )
        )
    session.commit()
    _demo_bill_run(app, plan.id)


def _demo_bill_run(app: Flask, plan_id: int) -> None:
    """Give Acme a plan history from the first day of last month and, once the healthy server
    has been synced (the demo leaves the first validation to the person), its site
    news.example.com from then: Billing: Customers: Bill of last month then shows an invoice."""
    from ..catalog.assignment import assign
    from ..catalog.groups import plan_history, set_group_plan
    from ..models import Assignment, GroupPlan, Site

    session = get_state(app).session
    group = session.scalars(sa.select(BillingGroup).join(Customer).where(
        Customer.company == "Acme Publishing")).first()
    server_id = session.scalar(sa.select(Server.id).where(Server.name == "Demo: healthy"))
    if group is None or server_id is None:
        return
    start = (datetime.now(UTC).date().replace(day=1) - timedelta(days=1)).replace(day=1)
    terms = plan_history(session, group.id)
    if not terms or terms[0].start_date > start:
        session.execute(sa.delete(GroupPlan).where(GroupPlan.group_id == group.id))
        session.commit()
        set_group_plan(group, plan_id, start, None, actor=ACTOR)
    if session.scalar(sa.select(Assignment.id).where(Assignment.group_id == group.id)):
        session.commit()
        return
    if session.scalar(sa.select(Server.synced_at).where(Server.id == server_id)) is None:
        session.commit()
        return
    site_id = session.scalar(sa.select(Site.id).where(Site.server_id == server_id,
                                                      Site.name == "news.example.com"))
    if site_id is not None:
        assign(group.id, server_id=server_id, site_ids=[site_id], actor=ACTOR, start=start)


def _port() -> int:
    value = os.environ.get(PORT_ENV, str(DEFAULT_PORT))
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise SystemExit(f"{PORT_ENV} must be a port number (0-65535), not {value!r}")
    return port


def _say(text: str, *, err: bool = False) -> None:
    # The launcher is a console program: it talks to the person who started it.
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The scheduler library narrates every job at INFO; the plugin's own lines are enough.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    port = _port()
    app = create_app()
    upgrade(app)  # the same as `flask lm-billing db upgrade`; nothing to do when current
    try:
        server = make_server("127.0.0.1", port, app, threaded=True)
    except (OSError, SystemExit):  # Werkzeug exits itself when the port is taken
        _say(
            f"Cannot serve on 127.0.0.1:{port} (in use?); set {PORT_ENV} to a free port.", err=True
        )
        return 2
    demo_servers = start_simulators()
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        register(app, demo_servers)
        url = f"http://127.0.0.1:{server.server_port}/"
        lines = [
            "",
            "ListManager Billing demo",
            f"  Portal:  {url}  (Billing: {url.rstrip('/')}{get_state(app).settings.url_prefix}/)",
            f"  Log in:  {' or '.join(DEMO_ACCOUNTS)} / {DEMO_PASSWORD}"
            "  (operator may change things, viewer may only look)",
            "  Simulated hosting servers:",
        ]
        for demo in demo_servers:
            lines.append(f"    {demo.name:24} 127.0.0.1:{demo.sim.port}  {demo.comments}")
        lines.append("  Stop with Ctrl+C.")
        _say("\n".join(lines))
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        stop_simulators(demo_servers)
        _say("Demo stopped; the simulated hosting servers are down.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
