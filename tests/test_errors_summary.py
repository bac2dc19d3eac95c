"""The Errors page's summary (counts by kind and by server, each a filter link), its grouping
by kind, the CSV export of a filter, and the gate's refusal in the page's words."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from _pages import add_group, add_server, count_statements, plain, post, text_of
from flask import Flask
from flask.testing import FlaskClient

from lm_billing_plugin.models import MailingList, Problem, Server
from lm_billing_plugin.state import get_state

KINDS = ("unknown_list", "changed_list", "unassigned_list")


def _problems(app: Flask, server_id: int, spec: dict[str, int], prefix: str = "") -> None:
    """``spec`` problems of each kind on the server (names <prefix><kind>-<n>)."""
    with app.app_context():
        session = get_state(app).session
        for kind, count in spec.items():
            for n in range(count):
                name = f"{prefix}{kind}-{n}"
                session.add(
                    Problem(
                        fingerprint=f"{server_id}-{name}",
                        server_id=server_id,
                        kind=kind,
                        object_type="list",
                        object_name=name,
                        detail=f"List '{name}' detail sentence.",
                    )
                )
        session.commit()


@pytest.fixture
def two_servers(app: Flask) -> tuple[int, int]:
    north = add_server(app, "North")
    south = add_server(app, "South")
    _problems(app, north, {"unknown_list": 30, "changed_list": 2}, "n-")
    _problems(app, south, {"unknown_list": 5, "unassigned_list": 40}, "s-")
    return north, south


def _counts(html: str, section: str) -> dict[str, str]:
    block = re.search(rf'id="lmb-by-{section}-h".*?</ul>', html, re.S)
    assert block, html[:2000]
    return dict(
        re.findall(
            r'<a href="[^"]*"[^>]*>([^<]+)</a> <span class="lmb-num">([\d,]+)</span>',
            block.group(0),
        )
    )


def test_summary_counts_by_kind_and_server(
    app: Flask, client: FlaskClient, two_servers: tuple[int, int]
) -> None:
    html = plain(client.get("/billing/errors"))
    assert _counts(html, "kind") == {
        "All kinds": "77",
        "list not in billing": "35",
        "list changed on the server": "2",
        "list has no owner": "40",
    }
    assert _counts(html, "server") == {"All servers": "77", "South": "45", "North": "32"}
    # Filtered by server: the kinds count that server's problems, the servers stay listed
    # (each is the size of the filter its link sets) and the current one is marked.
    north, _ = two_servers
    html = plain(client.get(f"/billing/errors?server={north}"))
    assert _counts(html, "kind")["list not in billing"] == "30"
    assert "list has no owner" not in _counts(html, "kind")
    assert re.search(rf'href="/billing/errors\?server={north}" aria-current="true">North', html)
    # Each kind count links to the filter it counts.
    assert f'href="/billing/errors?server={north}&kind=changed_list"' in html


def test_by_server_names_the_busiest_and_counts_the_rest(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_billing_plugin.web.views import problem_summary

    monkeypatch.setattr(problem_summary, "SERVERS_SHOWN", 3)
    app = make_app()
    client = app.test_client()
    ids = [add_server(app, f"S{n}") for n in range(6)]
    for n, sid in enumerate(ids):
        _problems(app, sid, {"unknown_list": 10 - n}, f"s{n}-")  # S0 has the most
    response = client.get("/billing/errors")
    assert _counts(plain(response), "server") == {"All servers": "45", "S0": "10", "S1": "9",
                                                  "S2": "8"}
    assert ("and 3 more servers with fewer problems: choose one in the Server filter"
            in text_of(response))
    # Filtered to a quiet server: it is named (marked current) beside the busiest ones.
    response = client.get(f"/billing/errors?server={ids[5]}")
    html = plain(response)
    assert _counts(html, "server") == {"All servers": "45", "S0": "10", "S1": "9", "S2": "8",
                                       "S5": "5"}
    assert "and 2 more servers" in text_of(response)
    # Every server stays in the Server filter.
    assert all(f'<option value="{sid}"' in html for sid in ids)


def test_counts_are_set_based(
    app: Flask, client: FlaskClient, two_servers: tuple[int, int]
) -> None:
    with count_statements(app) as few:
        client.get("/billing/errors")
    _problems(app, two_servers[0], {"unknown_list": 300, "missing_list": 40}, "more-")
    with count_statements(app) as many:
        html = text_of(client.get("/billing/errors"))
    assert "417" in html  # 77 + 340
    assert len(many) == len(few), many
    assert sum("GROUP BY" in s for s in many) == 2


def test_rows_are_grouped_by_kind_and_say_the_explanation_once(
    app: Flask, client: FlaskClient, two_servers: tuple[int, int]
) -> None:
    html = plain(client.get("/billing/errors"))
    groups = re.findall(r'<section class="lmb-kind-group" aria-labelledby="lmb-group-(\w+)"', html)
    # Drift first (the model's order), each kind once on the page.
    assert groups == ["unknown_list", "changed_list", "unassigned_list"]
    assert html.count("Fixing adds the list to billing (unassigned)") == 1
    assert html.count("These lists are on the hosting server but not in billing.") == 1
    # The stored sentence that only repeats name and meaning is left out; a changed list's
    # detail (what changed) stays.
    assert "n-unknown_list-0' detail sentence" not in html
    assert "n-changed_list-0' detail sentence" in html
    # One Fix button, in the action bar above the rows, with the fix-everything choice.
    assert html.count(">Fix Selected Objects</button>") == 1
    bar = html.index('id="lmb-actionbar"')
    assert bar < html.index('id="lmb-problems"')
    assert bar < html.index('id="lmb-all-matching"') < html.index('id="lmb-problems"')
    assert "(77), not only the ticked rows" in html


def _csv(client: FlaskClient, url: str) -> list[list[str]]:
    response = client.get(url)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.is_streamed
    assert "attachment" in response.headers["Content-Disposition"]
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


def test_csv_exports_what_the_filter_shows(
    app: Flask, client: FlaskClient, two_servers: tuple[int, int]
) -> None:
    _, south = two_servers
    rows = _csv(client, "/billing/errors.csv")
    assert rows[0][:3] == ["Server", "Problem", "Kind"]
    assert len(rows) == 1 + 77  # every page, not the first 50
    rows = _csv(client, f"/billing/errors.csv?server={south}&kind=unknown_list")
    assert len(rows) == 1 + 5
    assert {r[0] for r in rows[1:]} == {"South"}
    assert {r[1] for r in rows[1:]} == {"list not in billing"}
    # The page links to the CSV of its own filter.
    html = text_of(client.get(f"/billing/errors?server={south}&kind=unknown_list"))
    assert f'href="/billing/errors.csv?server={south}&amp;kind=unknown_list"' in html


def test_csv_cells_cannot_become_spreadsheet_formulas(app: Flask, client: FlaskClient) -> None:
    server = add_server(app, "=cmd|' /C calc'!A0")
    _problems(app, server, {"unknown_list": 1}, "=HYPERLINK(")
    rows = _csv(client, "/billing/errors.csv")
    assert rows[1][0].startswith("'=") and rows[1][4].startswith("'=")


def test_csv_needs_the_pages_permission(make_app: Any) -> None:
    app = make_app(permission_check=lambda user, action: False)
    assert app.test_client().get("/billing/errors.csv").status_code == 403


def test_the_gate_refusal_uses_the_pages_words(app: Flask, client: FlaskClient) -> None:
    from datetime import UTC, datetime

    server = add_server(app, "Lists")
    group = add_group(app)
    with app.app_context():
        session = get_state(app).session
        row = session.get(Server, server)
        assert row is not None
        row.validated_at = datetime.now(UTC)
        news = MailingList(server_id=server, name="news")
        session.add(news)
        session.commit()
        list_id = news.id
    _problems(app, server, {"unknown_list": 1}, "cyberdyne-announce-")
    response = post(
        client,
        f"/billing/servers/{server}/assign",
        {"group_id": str(group), "list_ids": str(list_id)},
        token_from=f"/billing/servers/{server}",
        follow=True,
    )
    text = plain(response)
    assert "list not in billing: 'cyberdyne-announce-unknown_list-0'" in text, text[-3000:]
    assert "unknown_list '" not in text
