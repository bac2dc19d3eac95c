"""The Servers page's status filter (?status=, the Overview's buckets): the right servers, the
counts beside each link, paging and sorting kept, bad values ignored with a note; the
Overview's "servers by status" bars link to it."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import pytest
from _pages import PAGES_CONFIG, add_server, text_of
from flask import Flask

from lm_billing_plugin.reports.overview import BUCKET_ORDER, BUCKET_SLUGS, STATUS_BUCKETS


def names(page: str) -> list[str]:
    body = page[page.index("<tbody>") : page.index("</tbody>")]
    return [html.unescape(n) for n in
            re.findall(r'<th scope="row"><a href="[^"]+">([^<]*)</a>', body)]


def filter_links(page: str) -> dict[str, str]:
    nav = page[page.index('id="lmb-status-filter"'):]
    nav = nav[: nav.index("</nav>")]
    return {html.unescape(label).strip(): html.unescape(href) for href, label in
            re.findall(r'<a href="([^"]+)">([^<]+)</a>', nav)}


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    app = make_app(LM_BILLING_PAGE_SIZE=2, **PAGES_CONFIG)
    for name, status in (("ok-a", "ok"), ("ok-b", "ok"), ("ok-c", "ok"), ("denied", "host_denied"),
                         ("badpw", "auth_failed"), ("down", "unreachable"),
                         ("nolog", "logging_off"), ("new", "unchecked"), ("odd", "error")):
        add_server(app, name, status=status)
    add_server(app, "retired", status="ok", active=False)  # deactivated: in no bucket
    return app


def test_every_bucket_shows_its_servers_with_counts(app: Flask) -> None:
    client = app.test_client()
    everything = text_of(client.get("/billing/"))
    links = filter_links(everything)
    assert set(links) == {"reachable (3)", "refused (2)", "unreachable (1)", "logging off (1)",
                          "not checked (1)", "other trouble (1)"}
    expected = {"reachable": ["ok-a", "ok-b", "ok-c"], "refused": ["badpw", "denied"],
                "unreachable": ["down"], "logging off": ["nolog"], "not checked": ["new"],
                "other trouble": ["odd"]}
    for bucket in BUCKET_ORDER:
        url = f"/billing/?status={BUCKET_SLUGS[bucket]}&sort=name"
        shown: list[str] = []
        for number in (1, 2):
            page = text_of(client.get(f"{url}&page={number}"))
            shown += names(page) if number == 1 or len(expected[bucket]) > 2 else []
        assert shown == expected[bucket], bucket
    # Every status code the overview knows lands in exactly one bucket.
    assert set(STATUS_BUCKETS.values()) == set(BUCKET_ORDER)


def test_paging_and_sorting_keep_the_filter(app: Flask) -> None:
    client = app.test_client()
    first = text_of(client.get("/billing/?status=reachable&sort=name&dir=desc"))
    assert names(first) == ["ok-c", "ok-b"]
    assert "Page 1 of 2 (3 in all)" in first
    assert "Showing the 3 active servers whose status is reachable." in first
    assert '<strong aria-current="page">reachable (3)</strong>' in first
    nxt = re.search(r'<a[^>]*href="([^"]+)"[^>]*rel="next"|rel="next"[^>]*href="([^"]+)"', first)
    assert nxt
    href = html.unescape(nxt.group(1) or nxt.group(2))
    assert "status=reachable" in href and "dir=desc" in href
    assert names(text_of(client.get(href))) == ["ok-a"]
    # The sort headers keep it too.
    assert 'status=reachable' in html.unescape(
        re.search(r'<th[^>]*aria-sort[^>]*>\s*<a href="([^"]+)"', first).group(1))  # type: ignore[union-attr]
    # A page past the end of the filtered list shows its last page.
    assert names(text_of(client.get("/billing/?status=reachable&page=9"))) == ["ok-c"]
    # "all" drops the filter.
    assert "status=" not in filter_links(first)["all"]


@pytest.mark.parametrize("value", ["bogus", "<script>", "reachable'--", "x" * 500])
def test_a_bad_status_value_is_ignored_with_a_note(app: Flask, value: str) -> None:
    response = app.test_client().get("/billing/", query_string={"status": value})
    page = text_of(response)
    assert response.status_code == 200
    raw = response.get_data(as_text=True)
    note = re.search(r'id="lmb-status-unknown">([^<]*)<', raw)  # escaped: no tag inside
    assert note and "showing every server" in html.unescape(note.group(1))
    assert f'filter "{value[:40]}"' in html.unescape(note.group(1))
    assert "Page 1 of 5 (10 in all)" in page  # every server, deactivated one included


def test_an_empty_bucket_says_so(make_app: Callable[..., Flask]) -> None:
    app = make_app(**PAGES_CONFIG)
    add_server(app, "only", status="ok")
    page = text_of(app.test_client().get("/billing/?status=unreachable"))
    assert "No active server has this status." in page
    assert "unreachable (0)" in page


def test_the_overview_bars_link_to_the_filtered_servers_page(app: Flask) -> None:
    page = app.test_client().get("/billing/overview").get_data(as_text=True)
    for bucket in BUCKET_ORDER:
        assert f'href="/billing/?status={BUCKET_SLUGS[bucket]}"' in page, bucket
    assert "sort=status" not in page
