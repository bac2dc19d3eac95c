"""Billing: Overview — the landing page: servers by status, open problems by kind and server,
the fleet's last validation and sync, the next scheduled run, usage and revenue per month."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import current_app, render_template, request, url_for

from ...i18n import gettext, ngettext
from ...models import Server
from ...reports import overview as figures
from ...reports.charts import Point, columns, rows
from ...reports.periods import month_label
from ...schedule.claims import schedule_summary
from ...state import get_state
from ..l10n import format_number
from .paging import MAX_ID
from .problem_summary import KIND_WORDS
from .servers import BUCKET_WORDS, STATUS_WORDS

OVERVIEW_SERVERS = 20  # servers in the Overview's usage table (the busiest)


def _status(code: str) -> str:
    return gettext(STATUS_WORDS[code]) if code in STATUS_WORDS else code


def _server_arg() -> int | None:
    try:
        value = int(request.args.get("server", ""))
    except ValueError:
        return None
    return value if 0 < value <= MAX_ID else None


def overview() -> str:
    session = get_state().session
    today = get_state().settings.billing_today()
    statuses = figures.servers_by_status(session)
    status_points = [
        Point(BUCKET_WORDS.get(bucket, bucket), sum(codes.values()),
              url_for("lm_billing.servers", status=figures.BUCKET_SLUGS[bucket]),
              ngettext("%(bucket)s: %(num)s server", "%(bucket)s: %(num)s servers",
                       sum(codes.values()), bucket=BUCKET_WORDS.get(bucket, bucket))
              + ("" if not codes else " (" + ", ".join(
                  f"{_status(c)}: {n}" for c, n in sorted(codes.items())) + ")"))
        for bucket, codes in statuses.items()
    ]
    kinds = figures.problems_by_kind(session)
    kind_points = [
        Point(KIND_WORDS.get(kind, kind), n, url_for("lm_billing.problems", kind=kind),
              gettext("%(kind)s: %(num)s open", kind=KIND_WORDS.get(kind, kind), num=n))
        for kind, n in kinds
    ]
    by_server, servers_with_problems = figures.problems_by_server(session)
    server_points = [
        Point(name, n, url_for("lm_billing.problems", server=sid),
              gettext("%(kind)s: %(num)s open", kind=name, num=n))
        for sid, name, n in by_server
    ]
    server_id = _server_arg()
    chosen = None
    if server_id is not None:
        chosen = session.execute(
            sa.select(Server.id, Server.name).where(Server.id == server_id)
        ).first()
        if chosen is None:
            server_id = None  # a stale bookmark: show the fleet
    months = figures.usage_by_month(session, today, server_id)

    def usage_link(month: Any) -> str:
        label = month_label(month)
        return url_for("lm_billing.report_usage", start=label, end=label, server=server_id,
                       by="server" if server_id is None else "list")

    message_points = [Point(month_label(m.month), m.messages, usage_link(m.month),
                            gettext("%(month)s: %(num)s messages", month=month_label(m.month),
                                    num=format_number(m.messages))) for m in months]
    recipient_points = [Point(month_label(m.month), m.recipients, usage_link(m.month),
                              gettext("%(month)s: %(num)s recipients", month=month_label(m.month),
                                      num=format_number(m.recipients)))
                        for m in months]
    revenue = figures.revenue_by_month(session, today)
    currencies = sorted({c for m in revenue for c in m.amounts})
    revenue_charts = []
    for currency in currencies:
        points = []
        for m in revenue:
            amount = m.amounts.get(currency)
            label = month_label(m.month)
            points.append(Point(
                label, amount or 0,
                url_for("lm_billing.report_revenue", start=label, end=label),
                f"{label}: {currency} {amount or 0:,.2f}"))
        revenue_charts.append((currency, columns(points, height=200)))
    per_server = figures.usage_by_server(session, today)
    first, last = month_label(months[0].month), month_label(months[-1].month)
    freshness = figures.fleet_freshness(session)
    schedule = schedule_summary(session)
    session.commit()  # no transaction stays open while the page renders
    return render_template(
        "lm_billing/overview.html",
        status_chart=rows(status_points),
        kind_chart=rows(kind_points),
        server_chart=rows(server_points),
        servers_with_problems=servers_with_problems,
        open_total=sum(n for _k, n in kinds),
        messages_chart=columns(message_points),
        recipients_chart=columns(recipient_points),
        months=months,
        revenue=revenue,
        currencies=currencies,
        revenue_charts=revenue_charts,
        per_server=per_server,
        # The landing page lists the busiest servers only: the whole fleet is the Usage per
        # server report, which pages (a network of 1,000 servers is not 1,000 rows here).
        busiest=per_server[:OVERVIEW_SERVERS],
        usage_range={"start": first, "end": last},
        chosen=chosen,
        freshness=freshness,
        schedule=schedule,
        month_label=month_label,
        endpoints=current_app.view_functions,
    )
