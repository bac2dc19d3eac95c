"""Translations and time zones: the shipped catalog is complete and compiled, every GET page
renders in German with no English left, Flask-Babel works with and without the host's own,
and times show in the viewer's zone, named, with <time datetime> in UTC."""

from __future__ import annotations

import html
import io
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from _login_host import as_user, build_url, login_host_app, plugin_rules, seed_rows
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask
from werkzeug.routing import Rule

from lm_billing_plugin.i18n import TRANSLATIONS_DIR

POT = TRANSLATIONS_DIR / "messages.pot"
LANGUAGES = sorted(p.parent.parent.name for p in TRANSLATIONS_DIR.glob("*/LC_MESSAGES/*.po"))


def test_german_ships() -> None:
    assert "de" in LANGUAGES


@pytest.mark.parametrize("lang", LANGUAGES)
def test_committed_mo_is_compiled_from_the_po(lang: str) -> None:
    """The .mo in the wheel is the .po compiled: run `make translations` after editing."""
    folder = TRANSLATIONS_DIR / lang / "LC_MESSAGES"
    with (folder / "lm_billing.po").open("rb") as f:
        catalog = read_po(f, locale=lang, domain="lm_billing")
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    assert (folder / "lm_billing.mo").read_bytes() == compiled.getvalue(), (
        f"{lang}: lm_billing.mo is older than lm_billing.po; run `make translations`"
    )


@pytest.mark.parametrize("lang", LANGUAGES)
def test_catalog_translates_every_message_of_the_template(lang: str) -> None:
    with POT.open("rb") as f:
        template = read_po(f)
    with (TRANSLATIONS_DIR / lang / "LC_MESSAGES" / "lm_billing.po").open("rb") as f:
        catalog = read_po(f, locale=lang)
    missing = [
        m.id for m in template
        if m.id and (m.id not in catalog or not catalog[m.id].string or catalog[m.id].fuzzy)
    ]
    assert not missing, f"{lang}: {len(missing)} untranslated, e.g. {missing[:5]}"


# --- Every page in German -------------------------------------------------------------------

# Words that only English text has; each is used somewhere on the pages in English. A German
# page that still shows one of them has text that bypassed the catalog.
ENGLISH = set(
    re.split(r"\s+", """the and or of to is are were has have not no yes with from for this
    that these there their which what when where who will be been on at by as it its all any every
    each none never only also then than yet after before into out over under page pages
    next previous save cancel delete edit create new show search find filter select
    selected validate validated sync synced syncing servers customer customers list
    lists plans charge charges template templates report reports usage revenue
    message messages members member recipients month months open problems errors
    error found run runs started finished running scheduled background validation billing
    group groups host comments object details amount price total
    overview utilities assign assigned owner limits invoice invoices back add remove
    """.strip())
)
# Not in the list although English: words German spells the same (Name, Server, Status,
# Version, Filter, Detail, Limit, Problem, Plan; "an", "was", "Kind" are German words too).

# Kept in English on purpose: product and protocol names, and ListManager's own labels and
# menu paths (the operator reads them in ListManager's English interface, so the page must
# name them as ListManager does; the seed's instructions quote them the same way).
ALLOWED = {
    "ListManager", "TclPort", "TCLPORT Hosts", "Enable Logging", "CSV", "CPM", "GB", "KB",
    "Yes, Log All Messages that ListManager Sends to Mailing Lists",
    "Utilities: Administration: Server: Server Settings: Automatic Maintenance: Logging",
    "LM_BILLING_SCHEDULER_ENABLED", "LM_BILLING_LEASE_SECONDS",
    "LM_BILLING_SCHEDULER_AUTOSTART", "README", "Background validation",
    "flask lm-billing run-due", "flask lm-billing scheduler", "Jinja", "Terminated",
}


def _visible_text(page: str) -> str:
    page = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", page)
    # aria-label and title are read out too.
    attrs = " ".join(re.findall(r'(?:aria-label|title|placeholder)="([^"]*)"', page))
    text = re.sub(r"(?s)<[^>]+>", " ", page)
    return html.unescape(text + " " + attrs)


def english_left(page: str, data: set[str]) -> set[str]:
    text = _visible_text(page)
    for value in sorted(data | ALLOWED, key=len, reverse=True):
        text = text.replace(value, " ")
    # Template code (an invoice template's {{ invoice.number }}, {% for group in ... %}) names
    # the data model, not words: it reads the same in every language.
    text = re.sub(r"(?s)\{\{.*?\}\}|\{%.*?%\}", " ", text)
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
    return words & ENGLISH


def _seed_values(app: Flask) -> set[str]:
    """The seeded rows' names and texts: data, not the page's words."""
    return {
        "Lists", "news", "site1", "Site One", "Acme Ltd", "billing@acme.example", "Gold",
        "Acme lists", "Setup Fee", "Plain", "List news is not assigned to any billing group.",
        "lm_billing.css", "operator", "only_view", "only_edit", "only_run",
        # The seeded customer's own invoice template ("Plain") and its preview: a stored
        # template stays as its author wrote it, in every language.
        "Invoice {{ invoice.number }}", "Invoice 2026-00001",
    }


@pytest.fixture(scope="module")
def german(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, dict[str, Any]]]:
    path = tmp_path_factory.mktemp("german") / "billing.sqlite"
    app = login_host_app(f"sqlite:///{path}", LM_BILLING_DEFAULT_LOCALE="de",
                         LM_BILLING_TIMEZONE="Europe/Berlin")
    samples = seed_rows(app)
    yield app, samples
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def _get_rules() -> list[Rule]:
    app = login_host_app("sqlite://")
    try:
        return [r for r in plugin_rules(app)
                if "GET" in (r.methods or ()) and r.endpoint != "lm_billing.static"]
    finally:
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


GET_RULES = _get_rules()

@pytest.mark.parametrize("rule", [pytest.param(r, id=r.endpoint) for r in GET_RULES])
def test_every_get_page_is_german(german: tuple[Flask, dict[str, Any]], rule: Rule) -> None:
    app, samples = german
    url = build_url(app, rule, samples)
    client = app.test_client()
    response = client.get(url, headers=as_user(client, "operator"))
    body = response.get_data()  # read it all: a CSV streams in the request
    response.close()
    assert response.status_code == 200, (rule.endpoint, response.status_code)
    if response.mimetype != "text/html":  # a CSV or a PDF
        return
    page = body.decode("utf-8")
    assert '<html lang="de"' in page or "lang=" not in page
    left = english_left(page, _seed_values(app))
    assert not left, f"{rule.endpoint} ({url}) still shows English: {sorted(left)}"


def test_english_is_the_default_and_unchanged(tmp_path: Path) -> None:
    app = login_host_app(f"sqlite:///{tmp_path}/en.sqlite")
    seed_rows(app)
    client = app.test_client()
    page = client.get("/billing/", headers=as_user(client, "operator")).get_data(as_text=True)
    assert "Validate All Servers" in page and '<html lang="en"' in page


def test_a_host_babel_keeps_its_catalogs_and_picks_the_locale(tmp_path: Path) -> None:
    """The host's own Flask-Babel (initialised first, its selector says German) decides the
    language; its default domain is untouched by ours."""
    from flask_babel import Babel, get_babel

    app = Flask("host_with_babel")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/h.sqlite", TESTING=True,
                      LM_BILLING_ALLOW_ALL=True, WTF_CSRF_ENABLED=False, SECRET_KEY="x")
    Babel(app, locale_selector=lambda: "de")
    from lm_billing_plugin import LMBilling, upgrade

    LMBilling(app)
    with app.app_context():
        upgrade()
        assert get_babel(app).default_domain == "messages"
    page = app.test_client().get("/billing/").get_data(as_text=True)
    assert "Alle Server prüfen" in page and "Validate All Servers" not in page


def test_a_host_babel_initialised_later_takes_over(tmp_path: Path) -> None:
    from flask_babel import Babel

    app = Flask("host_babel_later")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/l.sqlite", TESTING=True,
                      LM_BILLING_ALLOW_ALL=True, WTF_CSRF_ENABLED=False, SECRET_KEY="x")
    from lm_billing_plugin import LMBilling, upgrade

    LMBilling(app)  # sets Flask-Babel up itself (English)
    Babel(app, locale_selector=lambda: "de")  # the host's, later: it wins
    with app.app_context():
        upgrade()
    page = app.test_client().get("/billing/").get_data(as_text=True)
    assert "Alle Server prüfen" in page


def test_times_show_in_the_viewer_zone_named_and_utc_in_the_markup(tmp_path: Path) -> None:
    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.web.l10n import format_time, iso_utc

    app = Flask("zones")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/z.sqlite", TESTING=True,
                      LM_BILLING_TIMEZONE="Europe/Berlin")
    billing = LMBilling(app)
    winter = datetime(2026, 12, 1, 13, 5)  # naive UTC, as stored
    with app.test_request_context():
        assert format_time(winter) == "2026-12-01 14:05 CET"
        assert iso_utc(winter) == "2026-12-01T13:05:00Z"

    @billing.timezone_selector
    def viewer_zone() -> str:
        return "America/New_York"

    with app.test_request_context():
        assert format_time(datetime(2026, 7, 1, 13, 5)) == "2026-07-01 09:05 EDT"


def test_billing_month_starts_in_the_billing_zone() -> None:
    from zoneinfo import ZoneInfo

    from lm_billing_plugin.settings import Settings

    settings = Settings.from_config({"LM_BILLING_BILLING_TIMEZONE": "Pacific/Auckland"})
    # 1 December 2026, 11:30 UTC is already 2 December in Auckland.
    moment = datetime(2026, 12, 1, 11, 30, tzinfo=ZoneInfo("UTC"))
    assert settings.billing_today(moment).isoformat() == "2026-12-02"
    with pytest.raises(ValueError, match="LM_BILLING_TIMEZONE must be an IANA"):
        Settings.from_config({"LM_BILLING_TIMEZONE": "Mars/Olympus"})


def test_counts_follow_the_locale(tmp_path: Path) -> None:
    from flask_babel import force_locale

    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.web.l10n import format_money, format_number

    app = Flask("numbers")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/n.sqlite", TESTING=True)
    LMBilling(app)
    with app.test_request_context():
        assert format_number(1234567) == "1,234,567"
        with force_locale("de"):
            assert format_number(1234567) == "1.234.567"
            assert format_money(1234.5) == "1.234,50"


def test_the_default_bill_period_and_assignment_day_follow_the_billing_zone(tmp_path: Path) -> None:
    """Run Billing's default period and an assignment's default start are billing days
    (LM_BILLING_BILLING_TIMEZONE), not the server's UTC date: at UTC+14 and UTC-12 the days
    are always apart, and each app's default follows its own zone."""
    from zoneinfo import ZoneInfo

    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.billing.runs import last_month
    from lm_billing_plugin.state import get_state

    days = {}
    for zone in ("Etc/GMT-14", "Etc/GMT+12"):
        app = Flask(f"zone_{zone.replace('/', '_')}")
        app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/{len(days)}.sqlite",
                          TESTING=True, LM_BILLING_BILLING_TIMEZONE=zone)
        LMBilling(app)
        with app.app_context():
            today = get_state().settings.billing_today()
            assert today == datetime.now(ZoneInfo(zone)).date()
            assert last_month() == last_month(today)
            days[zone] = today
    assert days["Etc/GMT-14"] > days["Etc/GMT+12"]


def test_messages_from_below_the_web_layer_show_in_german(tmp_path: Path) -> None:
    """A TclPort guidance, a fix message, a bill-run skip reason and a send outcome are kept
    in English where they are made (CLI, API, stored rows) and said in German on a page;
    the English is the same text byte for byte, and unknown text stays as stored."""
    from flask_babel import force_locale

    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.i18n import say
    from lm_billing_plugin.tclport.errors import guidance

    app = Flask("below")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/b.sqlite", TESTING=True)
    LMBilling(app)
    denied = guidance("HOST_DENIED", host="lm.example", port=2021,
                      server_message="192.0.2.7 is not in TCLPORT Hosts")
    skip = "Group Acme lists has no hosting plan for this period: assign one, then run the " \
           "period again."
    refused = "not sent: every recipient was refused (a@example.com refused: 550 no such user)"
    with app.test_request_context():
        for text in (denied, skip, refused, "250 OK, the server's own words"):
            assert say(text) == text
        with force_locale("de"):
            german = say(denied)
            assert "192.0.2.7" in german and "TCLPORT Hosts" in german
            assert not english_left(german, {"lm tclport", "Utilities: Administration: Server:"
                                             " Server Settings: Security: GUI Hosts"})
            assert say(skip).startswith("Gruppe Acme lists hat für diesen Zeitraum")
            assert say(refused) == ("nicht gesendet: jeder Empfänger wurde abgelehnt "
                                    "(a@example.com abgelehnt: 550 no such user)")
            assert say("250 OK, the server's own words") == "250 OK, the server's own words"
            # A hosting server's huge name inside a stored sentence: shown as stored, at once
            # (no backtracking over 60,000 bytes on every page row).
            huge = "not sent: every recipient was refused (" + "x" * 60_000 + ")"
            started = time.perf_counter()
            assert say(huge) == huge
            assert time.perf_counter() - started < 0.5


def test_the_last_english_sentences_have_whole_german_templates(tmp_path: Path) -> None:
    """The sentences made below the web layer from pieces before (an invalid_field problem,
    the version step of a check, 'not on this server', a Jinja message) are whole catalog
    templates: the English is what the engine makes, the German keeps every value."""
    from flask_babel import force_locale

    from lm_billing_plugin import LMBilling
    from lm_billing_plugin.engine.inventory import Rejected
    from lm_billing_plugin.engine.reconcile import field_problems
    from lm_billing_plugin.i18n import say

    class Snapshot:
        server_id = 1
        server_name = "Lists"

    rejected = [
        Rejected("server", "", "version", "version", "of 45 characters (limit 40)"),
        Rejected("site", "s" * 300, "name", "site name", "of 300 characters (limit 255)"),
        Rejected("list", "news", "descr", "list description",
                 "containing a NUL character (\\x00)"),
        Rejected("list", "news", "members", "member count",
                 "of 5,000,000,000 (limit 2,147,483,647)"),
    ]
    details = [f.detail for f in field_problems(Snapshot(), rejected)]  # type: ignore[arg-type]
    assert details[2] == ("Server 'Lists' sent a list description containing a NUL character "
                          "(\\x00) for list 'news'; billing leaves this list out until it is "
                          "corrected on the hosting server. Everything else was stored.")
    app = Flask("last_english")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/l.sqlite", TESTING=True)
    LMBilling(app)
    with app.test_request_context():
        assert [say(d) for d in details] == details  # English: as stored
        with force_locale("de"):
            german = [say(d) for d in details]
            assert german[0].startswith("Server 'Lists' hat die Version mit 45 Zeichen "
                                        "(Grenze 40) gesendet")
            assert "den Site-Namen '" + "s" * 120 in german[1]
            assert "die Listenbeschreibung mit einem NUL-Zeichen" in german[2]
            assert "die Mitgliederzahl von 5,000,000,000" in german[3]
            for text in german:
                assert not english_left(text, {"Lists", "news", "s" * 120}), text
            assert say("list(s) [3, 4] are not on this server") == (
                "Liste(n) [3, 4]: nicht auf diesem Server")
            assert say("site(s) [7] were removed from the server; only active sites can be "
                       "assigned").startswith("Site(s) [7]: vom Server entfernt")
            assert say("expected token 'end of print statement', got 'b'") == (
                "Token 'Ende der Ausgabeanweisung' erwartet, stattdessen 'b'")


# --- Error paths in German ------------------------------------------------------------------

# Settings names and command lines the refusals quote: they read the same in every language.
QUOTED = {"LM_BILLING_ALLOWED_NETWORKS", "LM_BILLING_ALLOW_LOOPBACK", "lm tclport",
          "Utilities: Administration: Server: Server Settings: Security: GUI Hosts"}


def test_error_paths_show_in_german(tmp_path: Path) -> None:
    """What a failed action leaves on the page (a flash, a field error, a problem row, a skip
    reason) is in German when the viewer reads German: the services keep making their English
    sentences (the CLI and the API show those), the pages say them from the catalog."""
    from _login_host import csrf_token
    from flask.testing import FlaskClient

    from lm_billing_plugin.billing.runs import create_bill_run, run_bill_run
    from lm_billing_plugin.models import Customer, Server
    from lm_billing_plugin.state import get_state
    from lm_billing_plugin.testing.simulator import Dataset, HostSim
    from lm_billing_plugin.web.views.runs import shutdown_executor, wait_for_batches

    app = login_host_app(f"sqlite:///{tmp_path}/errors.sqlite", LM_BILLING_DEFAULT_LOCALE="de",
                         LM_BILLING_TIMEZONE="Europe/Berlin")
    samples = seed_rows(app)
    client = app.test_client()
    user = as_user(client, "operator")
    data = _seed_values(app) | QUOTED

    def post(client: FlaskClient, url: str, form: dict[str, Any]) -> str:
        form = {"csrf_token": csrf_token(client), **form}
        response = client.post(url, data=form, headers=user, follow_redirects=True)
        assert response.status_code in (200, 400, 409), (url, response.status_code)
        return response.get_data(as_text=True)

    def german(page: str, what: str, *also: str) -> None:
        left = english_left(page, data | set(also))
        assert not left, f"{what} still shows English: {sorted(left)}"

    try:
        # A refused SSRF host next to the Host Name field: a metadata name and address.
        page = post(client, "/billing/servers/new",
                    {"name": "Meta", "host": "metadata.google.internal", "port": "2021"})
        assert "ist der Name eines Cloud-Metadatendienstes" in page
        german(page, "the metadata name", "metadata.google.internal")
        page = post(client, "/billing/servers/new",
                    {"name": "Meta", "host": "169.254.169.254", "port": "2021"})
        assert "link-lokale Adresse (Cloud-Metadaten)" in page
        german(page, "the metadata host")

        # A server check the hosting server refuses (HOST_DENIED: billing's address is not in
        # its TCLPORT Hosts), and the server's page after it.
        with HostSim(Dataset.generate(sites=1, lists=3, seed=4),
                     allowed_hosts=("192.0.2.99",)) as sim:
            with app.app_context():
                s = get_state(app).session
                row = Server(name="Denied", host="127.0.0.1", port=sim.port, comments="")
                s.add(row)
                s.commit()
                denied = row.id
            page = post(client, f"/billing/servers/{denied}/check", {})
            german(page, "the failed check", "127.0.0.1")
            assert "127.0.0.1" in page

        # Fix Selected Objects on the Errors page: the fix messages.
        errors = client.get("/billing/errors", headers=user).get_data(as_text=True)
        ids = re.findall(r'name="problem_ids" value="(\d+)"', errors)
        assert ids
        page = post(client, "/billing/errors/fix", {"problem_ids": ids})
        wait_for_batches(app)
        german(page, "the fix")

        # A bill run with a skipped customer: its run page says why, in German.
        with app.app_context():
            s = get_state(app).session
            lonely = Customer(company="Lonely GmbH", email="a@lonely.example")
            s.add(lonely)
            s.commit()
            run_id = create_bill_run(datetime(2026, 2, 1).date(), datetime(2026, 2, 28).date(),
                                     [lonely.id], actor="operator")
            run_bill_run(run_id)
        page = client.get(f"/billing/bills/runs/{run_id}", headers=user).get_data(as_text=True)
        assert "Lonely GmbH" in page
        german(page, "the skipped customer", "Lonely GmbH", "a@lonely.example")

        # A duplicate customer name: the field error.
        page = post(client, "/billing/customers/new",
                    {"company": "ACME  ltd", "email": "x@acme.example"})
        assert "Einen Kunden mit diesem Namen gibt es bereits" in page
        german(page, "the duplicate name", "ACME  ltd", "x@acme.example")

        # An invoice template with a Jinja syntax error and one the sandbox refuses: the field
        # error is German, the line number kept.
        page = post(client, "/billing/invoice-templates/new?kind=web",
                    {"name": "Kaputt", "body": "Hallo\n{% for a in b %}x", "preview": "y"})
        assert "Zeile 2: Unerwartetes Ende der Vorlage." in page
        # Jinja names the tags it wanted in its own words ("'endfor' or 'else'").
        german(page, "the Jinja syntax error", "Kaputt", "'endfor' or 'else'", "'for'")
        page = post(client, "/billing/invoice-templates/new?kind=web",
                    {"name": "Kaputt", "body": "{{ range(100000) }}", "preview": "y"})
        assert ("Zeile 1: in einer Rechnungsvorlage nicht erlaubt: die Zahl 100000 ist dafür zu"
                " groß (höchstens 10000)") in page
        german(page, "the sandbox refusal", "Kaputt")

        # Find Administrator / Find Member: the input errors next to the field.
        page = client.get("/billing/utilities/find-admin?pattern=a||b",
                          headers=user).get_data(as_text=True)
        assert "Die Suche hat einen leeren Teil" in page
        german(page, "the empty search part")
        page = client.get("/billing/utilities/find-member?email=nobody",
                          headers=user).get_data(as_text=True)
        assert "'nobody' ist keine E-Mail-Adresse" in html.unescape(page)
        german(page, "the bad email address", "nobody")

        # Error pages: a missing object, an expired form (CSRF) and a refusal.
        response = client.get("/billing/plans/999999/edit", headers=user)
        page = response.get_data(as_text=True)
        assert response.status_code == 404
        assert "Diesen Hosting-Tarif gibt es nicht" in page and "Nicht gefunden" in page
        german(page, "the missing plan")
        response = client.post(f"/billing/servers/{samples['server_id']}/check", headers=user,
                               data={"csrf_token": "stale"})
        page = response.get_data(as_text=True)
        assert response.status_code == 400
        assert "Laden Sie die Seite neu und senden Sie das Formular erneut ab." in page
        german(page, "the expired form", "CSRF")
        viewer = as_user(client, "only_view")
        response = client.get("/billing/customers/new", headers=viewer)
        page = response.get_data(as_text=True)
        assert response.status_code == 403
        assert "Abrechnungs-Berechtigung 'edit'" in html.unescape(page)
        german(page, "the refusal", "'edit'")

        # Assign on the server page with nothing ticked: the flash is German.
        page = post(client, f"/billing/servers/{samples['server_id']}/assign",
                    {"group_id": str(samples["group_id"])})
        assert "Nichts wurde zugeordnet" in page
        german(page, "the empty assign")

        # A refused assign: the gate (the seeded server was never validated).
        page = post(client, "/billing/assign",
                    {"server_id": str(samples["server_id"]),
                     "group_id": str(samples["group_id"]), "whole_server": "y",
                     "start": "2026-02-01"})
        assert "Prüfen und synchronisieren Sie zuerst Server" in page
        german(page, "the refused assign")
    finally:
        shutdown_executor(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()
