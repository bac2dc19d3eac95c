"""The layout's promises a host can notice: mounting the plugin loads no simulator or other test
code, and the old module paths the README once named still work, with a deprecation warning."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap

import pytest

# Run in a fresh interpreter: this test process has long since imported the simulator.
HOST = textwrap.dedent(
    """
    import sys
    from flask import Flask
    import lm_billing_plugin

    def test_code():
        return sorted(m for m in sys.modules
                      if "simulator" in m or m.startswith("lm_billing_plugin.testing"))

    loaded_at_import = test_code()

    app = Flask("host")
    app.config.update(TESTING=True, SQLALCHEMY_DATABASE_URI="sqlite://", LM_BILLING_ALLOW_ALL=True,
                      SECRET_KEY="x", LM_BILLING_SCHEDULER_AUTOSTART=False)
    lm_billing_plugin.LMBilling(app)
    lm_billing_plugin.upgrade(app)
    client = app.test_client()
    for url in ("/billing/", "/billing/errors", "/billing/background", "/billing/assign",
                "/billing/customers", "/billing/plans"):
        assert client.get(url).status_code == 200, url
    assert app.test_cli_runner().invoke(args=["lm-billing", "servers", "list"]).exit_code == 0

    loaded_at_run = test_code()
    print(repr((loaded_at_import, loaded_at_run)))
    """
)


def test_a_host_that_mounts_the_plugin_loads_no_simulator_code() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HOST], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    at_import, at_run = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert at_import == []
    assert at_run == []


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("lm_billing_plugin.portals", "FLASK_ADMIN_TEMPLATE", "lm_billing_plugin.web.portals"),
        ("lm_billing_plugin.notify", "trouble_found", "lm_billing_plugin.schedule.notify"),
        ("lm_billing_plugin.notify", "run_finished", "lm_billing_plugin.schedule.notify"),
        ("lm_billing_plugin.runner", "validate_servers", "lm_billing_plugin.engine.batches"),
        ("lm_billing_plugin.runner", "fix_problems", "lm_billing_plugin.engine.fixes"),
        ("lm_billing_plugin.runner", "assign", "lm_billing_plugin.catalog.assignment"),
        ("lm_billing_plugin.runner", "GateError", "lm_billing_plugin.catalog.assignment"),
        ("lm_billing_plugin.scheduler", "schedule_summary", "lm_billing_plugin.schedule.claims"),
    ],
)
def test_an_old_path_still_works_and_says_where_the_name_moved(
    old: str, name: str, new: str
) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{new}.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
