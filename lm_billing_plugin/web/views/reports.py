"""Billing: Reports — Usage (per server, site, list, customer or group, sortable, paged, with
its trend and a CSV), Revenue (per month, customer, plan, server; outstanding bills) and Plan
limits (groups over or near a limit); the queries are in reports/, one set-based each."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date
from typing import Any, Final

import sqlalchemy as sa
from flask import Response, render_template, request, stream_with_context, url_for

from ...i18n import N_, Words, gettext
from ...models import Server
from ...reports import limits, revenue
from ...reports import usage as usage_report
from ...reports.charts import Point, columns, rows
from ...reports.periods import add_months, last_months, month_label, months_between, parse_month
from ...state import get_state
from ..csvout import text_cell
from ..l10n import format_number
from .paging import MAX_ID, clamp, page_from_request

# A range longer than this is cut to its last months: ten years of months stays readable.
MAX_MONTHS: Final = 120
DIMENSION_WORDS: Final = Words({"server": N_("Server"), "site": N_("Site"), "list": N_("List"),
                                "customer": N_("Customer"), "group": N_("Billing group")})


def _today() -> date:
    # The billing month boundary (LM_BILLING_BILLING_TIMEZONE), not the server's clock.
    return get_state().settings.billing_today()


def _range(default_months: int = 1) -> tuple[date, date]:
    """The report's months from ?start=&end= (YYYY-MM); this month (or the last
    ``default_months``) when absent or unreadable; swapped when given backwards."""
    this = _today().replace(day=1)
    first = parse_month(request.args.get("start"))
    last = parse_month(request.args.get("end"))
    if first is None and last is None:
        return add_months(this, 1 - default_months), this
    first = first or last
    last = last or first
    assert first is not None and last is not None
    if first > last:
        first, last = last, first
    if len(months_between(first, last)) > MAX_MONTHS:
        first = add_months(last, 1 - MAX_MONTHS)
    return first, last


def _server_arg() -> int | None:
    try:
        value = int(request.args.get("server", ""))
    except ValueError:
        return None
    return value if 0 < value <= MAX_ID else None


def reports() -> str:
    return render_template("lm_billing/reports_index.html")


def usage() -> Any:
    state = get_state()
    session = state.session
    by = request.args.get("by", "server")
    if by not in usage_report.DIMENSIONS:
        by = "server"
    first, last = _range()
    server_id = _server_arg()
    servers = session.execute(
        sa.select(Server.id, Server.name).order_by(Server.name)).all()
    if server_id is not None and server_id not in {s.id for s in servers}:
        server_id = None
    page = page_from_request(
        "lm_billing.report_usage", dict.fromkeys(usage_report.SORTS), default_sort="messages",
        size=state.settings.page_size,
        keep={"by": by, "start": month_label(first), "end": month_label(last),
              "server": server_id},
    )
    if "dir" not in request.args and page.sort != "name":
        page.direction = "desc"  # the biggest first, unless asked otherwise
    query = usage_report.UsageQuery(by, first, last, server_id, page.sort,
                                    page.direction == "desc")
    if request.args.get("format") == "csv":
        return _usage_csv(query)
    found, page.total = usage_report.usage_page(session, query, offset=page.offset,
                                                limit=page.size)
    if not found and page.number > 1:
        # Past the end (a stale bookmark): the grouped statement's count comes with its rows,
        # so ask once more (the per-list pages of one month have it from the roll-ups).
        if page.total == 0:
            page.total = usage_report.usage_count(session, query)
        clamp(page)
        found, page.total = usage_report.usage_page(session, query, offset=page.offset,
                                                    limit=page.size)
    months = months_between(first, last)
    if len(months) < 2:
        months = last_months(last, 12)  # one month: its trend is the year up to it
    trend = usage_report.usage_trend(session, query, months)
    session.commit()

    def link(month: date) -> str:
        label = month_label(month)
        return url_for("lm_billing.report_usage", by=by, start=label, end=label,
                       server=server_id)

    chart = columns([
        Point(month_label(m), trend.get(m, (0, 0))[0], link(m),
              gettext("%(month)s: %(messages)s messages, %(recipients)s recipients",
                      month=month_label(m), messages=format_number(trend.get(m, (0, 0))[0]),
                      recipients=format_number(trend.get(m, (0, 0))[1])))
        for m in months
    ])
    return render_template(
        "lm_billing/reports_usage.html", rows=found, page=page, by=by, first=first, last=last,
        server_id=server_id, servers=servers, chart=chart, month_label=month_label,
        dimensions=DIMENSION_WORDS,
        csv_url=url_for("lm_billing.report_usage", by=by, start=month_label(first),
                        end=month_label(last), server=server_id, sort=page.sort,
                        dir=page.direction, format="csv"),
    )


def _usage_csv(query: usage_report.UsageQuery) -> Response:
    session = get_state().session
    header = {
        "server": ["server"], "site": ["server", "site"], "list": ["server", "site", "list"],
        "customer": ["customer"], "group": ["customer", "billing group"],
    }[query.by]

    def lines() -> Iterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*header, "messages", "recipients", "bytes", "message units"])
        for r in usage_report.usage_rows(session, query):
            names = {"server": [r.server], "site": [r.server, r.site],
                     "list": [r.server, r.site, r.list], "customer": [r.owner],
                     "group": [r.owner, r.group]}[query.by]
            writer.writerow([*(text_cell(n) for n in names), r.messages, r.recipients,
                             r.bytes, r.units])
            if out.tell() > 64_000:
                yield out.getvalue()
                out.seek(0)
                out.truncate()
        yield out.getvalue()
        session.commit()

    name = f"usage-by-{query.by}-{month_label(query.first)}-{month_label(query.last)}.csv"
    return Response(stream_with_context(lines()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def revenue_page() -> str:
    state = get_state()
    session = state.session
    first, last = _range(default_months=12)
    months = revenue.by_month(session, first, last)
    customers = revenue.by_customer(session, first, last)
    plans = revenue.by_plan(session, first, last)
    per_server = revenue.by_server(session, first, last)
    page = page_from_request("lm_billing.report_revenue", {"period": None},
                             default_sort="period", size=state.settings.page_size,
                             keep={"start": month_label(first), "end": month_label(last)})
    bills, page.total, outstanding_sums = revenue.outstanding(
        session, offset=page.offset, limit=page.size)
    if not bills and page.number > 1:
        clamp(page)
        bills, page.total, outstanding_sums = revenue.outstanding(
            session, offset=page.offset, limit=page.size)
    session.commit()
    currencies = sorted({a.currency for a in months})
    charts = []
    for currency in currencies:
        got = {a.key: a.amount for a in months if a.currency == currency}
        charts.append((currency, columns([
            Point(month_label(m), got.get(m, 0),
                  url_for("lm_billing.report_revenue", start=month_label(m), end=month_label(m)),
                  f"{month_label(m)}: {currency} {got.get(m, 0):,.2f}")
            for m in months_between(first, last)
        ], height=200)))
    customer_chart = rows([
        Point(a.label, a.amount, url_for("lm_billing.customer_detail", customer_id=a.key),
              f"{a.label}: {a.currency} {a.amount:,.2f}") for a in customers[:10]
    ])
    return render_template(
        "lm_billing/reports_revenue.html", first=first, last=last, months=months,
        customers=customers, plans=plans, per_server=per_server, bills=bills, page=page,
        outstanding_sums=outstanding_sums, revenue_charts=charts, customer_chart=customer_chart,
        month_label=month_label,
    )


def limits_page() -> str:
    state = get_state()
    session = state.session
    found = limits.plan_limits(session, _today())
    session.commit()
    page = page_from_request("lm_billing.report_limits", {"percent": None},
                             default_sort="percent", size=state.settings.page_size)
    page.total = len(found)
    clamp(page)
    shown = found[page.offset:page.offset + page.size]
    chart = rows([
        Point(f"{r.company}: {r.group} ({gettext(r.limit)})", r.percent,
              url_for("lm_billing.customer_detail", customer_id=r.customer_id),
              gettext("%(company)s, %(group)s: %(limit)s %(value)s of %(maximum)s (%(percent)s %%)",
                      company=r.company, group=r.group, limit=gettext(r.limit),
                      value=format_number(r.value), maximum=format_number(r.maximum),
                      percent=r.percent))
        for r in found[:15]
    ])
    return render_template("lm_billing/reports_limits.html", rows=shown, page=page,
                           chart=chart, near=limits.NEAR,
                           over=sum(1 for r in found if r.over), total=len(found))
