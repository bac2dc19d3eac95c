"""Start-up cost of a CLI command (issue 15): importing the plugin and running `servers list`
loads no Alembic, Mako, pygments or WeasyPrint, nor the pages (their modules, forms, WTForms,
the billing cycle), and the lazy `lm-billing` group imports a command's module only when that
command runs, so its map of commands must stay complete; so must the URL map of the pages,
whose modules are imported on their first request (web/views ROUTES)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import pytest
from flask import Flask
from flask.testing import FlaskCliRunner

import lm_billing_plugin
from lm_billing_plugin import cli as cli_package
from lm_billing_plugin.web import views
from lm_billing_plugin.web.access import action_of

HEAVY = ("alembic", "mako", "pygments", "weasyprint")
# What only pages and API calls need: a CLI command that shows no page must not load it.
WEB_ONLY = ("wtforms", "flask_wtf", "apispec", "flask_login")
# Of the plugin's own modules, the CLI process may load these under web/ (the blueprint, the
# API's routes and the guard they need) but no page, form or page helper.
WEB_AT_INIT = {
    "lm_billing_plugin.web", "lm_billing_plugin.web.access", "lm_billing_plugin.web.api",
    "lm_billing_plugin.web.api.core", "lm_billing_plugin.web.api.openapi",
    "lm_billing_plugin.web.api.resources", "lm_billing_plugin.web.blueprint",
    "lm_billing_plugin.web.l10n", "lm_billing_plugin.web.menu", "lm_billing_plugin.web.portals",
    "lm_billing_plugin.web.views", "lm_billing_plugin.web.views.paging",
    *(f"lm_billing_plugin.web.api.resources.{name}"
      for name in ("bills", "catalog", "deletions", "problems", "runs", "servers")),
}
PACKAGE = Path(lm_billing_plugin.__file__).resolve().parent

# A fresh interpreter: this test process has imported everything long ago.
HOST = textwrap.dedent(
    """
    import sys
    from flask import Flask
    import lm_billing_plugin

    def loaded(names):
        return sorted({m.split(".")[0] for m in sys.modules} & set(names))

    at_import = loaded(%(heavy)r)
    app = Flask("host")
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI="sqlite://",
                      LM_BILLING_SCHEDULER_AUTOSTART=False, SECRET_KEY="x")
    lm_billing_plugin.LMBilling(app)
    urls = sorted((r.rule, r.endpoint, sorted(r.methods)) for r in app.url_map.iter_rules())
    with app.app_context():
        lm_billing_plugin.BillingBase.metadata.create_all(lm_billing_plugin.get_state().engine)
    result = app.test_cli_runner().invoke(args=["lm-billing", "servers", "list"])
    assert result.exit_code == 0, result.output
    cli_modules = sorted(m for m in sys.modules if m.startswith("lm_billing_plugin.cli."))
    own = sorted(m for m in sys.modules if m.startswith("lm_billing_plugin."))
    print(repr((at_import, loaded(%(heavy)r), loaded(%(web)r), cli_modules, own, urls)))
    """
) % {"heavy": HEAVY, "web": WEB_ONLY}


def _fresh(script: str) -> tuple[Any, ...]:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def servers_list_process() -> tuple[Any, ...]:
    return _fresh(HOST)


def test_servers_list_imports_no_heavy_module_and_only_its_own_command_module(
    servers_list_process: tuple[Any, ...],
) -> None:
    at_import, at_run, _web, cli_modules, _own, _urls = servers_list_process
    assert at_import == []
    assert at_run == []
    assert cli_modules == ["lm_billing_plugin.cli.output", "lm_billing_plugin.cli.servers"]


def test_servers_list_loads_no_page_form_or_billing_service(
    servers_list_process: tuple[Any, ...],
) -> None:
    _heavy, _at_run, web, _cli, own, _urls = servers_list_process
    assert web == []
    web_modules = {m for m in own if m.startswith("lm_billing_plugin.web")}
    assert web_modules <= WEB_AT_INIT, sorted(web_modules - WEB_AT_INIT)
    for layer in ("billing", "catalog", "reports", "web.forms", "web.views.servers"):
        assert not [m for m in own if m.startswith(f"lm_billing_plugin.{layer}")], layer
    # The scheduler's service (batches, notifications, SMTP) starts on a request, if ever.
    assert "lm_billing_plugin.schedule.service" not in own


def test_the_url_map_is_complete_before_any_page_module_is_imported(
    servers_list_process: tuple[Any, ...], app: Flask,
) -> None:
    urls = [tuple(u) for u in servers_list_process[5]]
    endpoints = {endpoint for _rule, endpoint, _methods in urls}
    # Every page of ROUTES, the static files, the API's routes: as in a process that has
    # imported every page module (this one, long ago).
    assert endpoints >= {f"lm_billing.{r.endpoint}" for rs in views.ROUTES.values() for r in rs}
    assert "lm_billing.static" in endpoints
    assert urls == sorted((r.rule, r.endpoint, sorted(r.methods or ()))
                          for r in app.url_map.iter_rules())


# A page request in a fresh interpreter: the guard refuses a stranger before the page's module
# is imported; an allowed request imports that module (and its forms), and no other page's.
PAGE = textwrap.dedent(
    """
    import sys
    from flask import Flask
    import lm_billing_plugin

    def pages():
        return sorted(m.rsplit(".", 1)[1] for m in sys.modules
                      if m.startswith("lm_billing_plugin.web.views.")
                      and m != "lm_billing_plugin.web.views.paging")

    app = Flask("host")
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI="sqlite://",
                      LM_BILLING_SCHEDULER_AUTOSTART=False, SECRET_KEY="x")
    allowed = set()
    lm_billing_plugin.LMBilling(app, permission_check=lambda user, action: action in allowed)
    with app.app_context():
        lm_billing_plugin.BillingBase.metadata.create_all(lm_billing_plugin.get_state().engine)
    client = app.test_client()
    refused = client.get("/billing/servers/new").status_code
    after_refusal = pages()
    forms_at_refusal = "wtforms" in sys.modules
    allowed.update(("view", "edit"))
    shown = client.get("/billing/servers/new").status_code
    print(repr((refused, after_refusal, forms_at_refusal, shown, pages(),
                "wtforms" in sys.modules)))
    """
)


def test_a_page_module_is_imported_by_its_first_allowed_request_only() -> None:
    refused, after_refusal, forms_at_refusal, shown, after_page, forms = _fresh(PAGE)
    assert refused == 403
    # The error page's layout reads the shared word tables (problem kinds, run statuses);
    # the refused page's own module, its forms and the other pages stay unloaded.
    assert set(after_refusal) <= {"problem_summary", "runs"}, after_refusal
    assert not forms_at_refusal
    assert shown == 200
    # The Servers module, and what the page's layout asks of the others (menus: none; the
    # shared template context: problem kinds and run statuses).
    assert "servers" in after_page
    assert "bills" not in after_page and "customers" not in after_page
    assert forms


def test_every_routed_view_exists_and_requires_the_action_its_route_names() -> None:
    for module, routes in views.ROUTES.items():
        for route in routes:
            lazy = views.LazyView(module, route.view or route.endpoint, route.action)
            assert action_of(lazy) == route.action
            assert action_of(lazy.load()) == route.action, (module, route.endpoint)


def _requires_marks(path: Path) -> dict[str, str]:
    """Module-level functions of a view module marked @requires(action), read from source."""
    marks = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name)
                        and dec.func.id == "requires"):
                    marks[node.name] = ast.literal_eval(dec.args[0])
    return marks


def test_every_view_marked_with_an_action_is_routed() -> None:
    # A page added to a module but not to ROUTES would have no URL, and the access and CSRF
    # matrices (made from the URL map) would not see it either.
    routed = {(module, route.view or route.endpoint): route.action
              for module, routes in views.ROUTES.items() for route in routes}
    for path in sorted((PACKAGE / "web" / "views").glob("*.py")):
        for name, action in _requires_marks(path).items():
            assert routed.get((path.stem, name)) == action, f"{path.stem}.{name}"


def test_every_page_the_package_links_to_is_in_the_url_map(app: Flask) -> None:
    from lm_billing_plugin.web.menu import MENU

    linked = {entry.endpoint for entry in MENU}
    for path in [*PACKAGE.rglob("*.py"), *(PACKAGE / "templates").rglob("*.html")]:
        text = path.read_text(encoding="utf-8")
        found = re.findall(r"url_for\(\s*[\"']lm_billing\.(\w+)", text)
        linked |= {f"lm_billing.{endpoint}" for endpoint in found}
    assert len(linked) > 50  # the pattern still finds the links
    assert linked <= set(app.view_functions), sorted(linked - set(app.view_functions))


def test_a_view_that_needs_more_than_its_route_says_refuses_to_run() -> None:
    # The guard let the request in on the route's action; a stronger @requires must not be
    # overruled by it, so the view does not run (and says which entry is wrong).
    lazy = views.LazyView("servers", "server_delete", "view")
    with pytest.raises(RuntimeError, match="requires 'edit' but its route"):
        lazy.load()
    with pytest.raises(RuntimeError):
        lazy()  # every time: nothing is kept from the refused load


def _modules_of(command: click.Command) -> set[str]:
    """The modules whose functions make up ``command`` and, for a group, its subcommands."""
    found = {command.callback.__module__} if command.callback is not None else set()
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found |= _modules_of(sub)
    return found


def test_the_lazy_map_names_every_command_and_every_module_that_adds_to_it() -> None:
    cli_package.load_commands()
    group = cli_package.cli
    assert set(group.commands) == set(cli_package.COMMANDS)
    for name, command in group.commands.items():
        prefix = f"{cli_package.__name__}."
        modules = {m.removeprefix(prefix) for m in _modules_of(command) if m.startswith(prefix)}
        # A group's own callback may live in a module the map names for it; subcommands
        # registered by another module (charges adds `groups charge`) must be named too.
        assert modules <= set(cli_package.COMMANDS[name]), name


def test_help_lists_every_command(runner: FlaskCliRunner, app: Flask) -> None:
    result = runner.invoke(args=["lm-billing", "--help"])
    assert result.exit_code == 0, result.output
    for name in cli_package.COMMANDS:
        assert name in result.output


def test_an_unknown_command_is_a_usage_error(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["lm-billing", "no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def _launch(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m lm_billing_plugin.cli ...` in a fresh interpreter, the demo's instance in
    tmp_path, with -X importtime so the test sees what it imported."""
    environ = {k: v for k, v in os.environ.items() if k not in ("FLASK_APP", "FLASK_DEBUG")}
    environ.update(FLASK_INSTANCE_PATH=str(tmp_path / "instance"), **env)
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lm_billing_plugin.cli", *args],
        capture_output=True, text=True, timeout=120, check=False, env=environ, cwd=tmp_path,
    )


def _imported(done: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_the_launcher_runs_the_commands_without_the_environments_cli_plugins(
    tmp_path: Path,
) -> None:
    demo = ["--app", "lm_billing_plugin.demo:create_app"]
    upgrade = _launch([*demo, "db", "upgrade"], tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr[-2000:]
    done = _launch([*demo, "servers", "list"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "No hosting servers yet" in done.stdout
    imported = {name.split(".")[0] for name in _imported(done)}
    # `flask` would have loaded every flask.commands entry point (the test extras install
    # Flask-AppBuilder's and Flask-Limiter's) before finding the app.
    plugins = {ep.value.split(".")[0].split(":")[0]
               for ep in entry_points(group="flask.commands")}
    assert plugins, "no flask.commands plugin installed: this test would not show anything"
    assert not imported & plugins
    assert not imported & set(HEAVY)  # (the demo itself uses Flask-WTF and Flask-Login)


def test_the_launcher_finds_the_app_in_flask_app(tmp_path: Path) -> None:
    demo = "lm_billing_plugin.demo:create_app"
    assert _launch(["--app", demo, "db", "upgrade"], tmp_path).returncode == 0
    done = _launch(["servers", "list"], tmp_path, FLASK_APP=demo)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "No hosting servers yet" in done.stdout


def test_the_launcher_without_an_app_says_how_to_name_one(tmp_path: Path) -> None:
    done = _launch(["servers", "list"], tmp_path)
    assert done.returncode == 2
    assert "Could not locate a Flask application" in done.stderr
    assert "lm-billing" not in done.stdout


def test_the_launcher_refuses_an_unknown_command(tmp_path: Path) -> None:
    done = _launch(["--app", "lm_billing_plugin.demo:create_app", "no-such-command"], tmp_path)
    assert done.returncode == 2
    assert "No such command 'no-such-command'" in done.stderr
