"""The report statements that must not grow with the lists read indexes, not tables, on
SQLite (whose planner has no statistics, so its plan is the same at 50 lists as at 500,000):
Plan limits reads no list row but those a list assignment names, and Usage per list of one
month sorted by name walks the (name, server_id) index, never sorting the month."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from test_reports import THIS, seed

from lm_billing_plugin.state import get_state


@contextmanager
def plans(app: Flask) -> Iterator[list[str]]:
    """The EXPLAIN QUERY PLAN of every SELECT the app runs inside the block, one text each."""
    seen: list[tuple[str, Any]] = []
    with app.app_context():
        engine = get_state(app).db.engine

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    out: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield out
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        for statement, parameters in seen:
            rows = raw.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            out.append("\n".join(str(r[-1]) for r in rows))


@pytest.fixture
def app(make_app: Any, tmp_path: Any) -> Flask:
    flask_app: Flask = make_app(f"sqlite:///{tmp_path / 'plans.sqlite'}")
    seed(flask_app, lists=50, servers=3)
    return flask_app


def test_plan_limits_reads_counts_not_lists(app: Flask) -> None:
    client = app.test_client()
    client.get("/billing/reports/limits")  # warm
    with plans(app) as seen:
        assert client.get("/billing/reports/limits").status_code == 200
    report = [p for p in seen if "lm_billing_list_count" in p]
    assert len(report) == 1, seen
    # The lists table is only looked up by key (a list assignment's list), never scanned.
    assert "SCAN lm_billing_list " not in report[0] + " " and "SCAN lm_billing_list\n" \
        not in report[0] + "\n", report[0]
    assert "lm_billing_list USING INTEGER PRIMARY KEY" in report[0], report[0]


@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("server", [False, True])
def test_usage_per_list_by_name_walks_the_name_index(app: Flask, direction: str,
                                                     server: bool) -> None:
    client = app.test_client()
    url = (f"/billing/reports/usage?by=list&sort=name&dir={direction}"
           f"&start={THIS:%Y-%m}&end={THIS:%Y-%m}")
    if server:
        url += "&server=2"
    client.get(url)
    with plans(app) as seen:
        response = client.get(url)
        assert response.status_code == 200
    page = [p for p in seen if "lm_billing_usage" in p and "lm_billing_list" in p]
    assert page, seen
    plan = "\n".join(page)
    index = ("sqlite_autoindex_lm_billing_list_1" if server
             else "ix_lm_billing_list_name_server")
    # The page walks the lists once, in the index's order (one server's: its (server_id,
    # name) key); the rest is by key: the month is never sorted, its usage rows are looked
    # up one list at a time.
    walk = "SEARCH" if server else "SCAN"
    assert f"{walk} lm_billing_list USING COVERING INDEX {index}" in plan, plan
    assert plan.count("SCAN lm_billing_list") == (0 if server else 1), plan
    assert "SCAN lm_billing_usage" not in plan and "SEARCH lm_billing_usage USING INDEX " \
        "ix_lm_billing_usage_period" not in plan, plan

