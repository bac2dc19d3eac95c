"""The README says what the code does: its configuration table's defaults are the code's
defaults, and a bad LM_BILLING_URL_PREFIX is refused with the plugin's own message."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from flask import Flask

from lm_billing_plugin import LMBilling
from lm_billing_plugin.settings import CONFIG

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _table_defaults() -> dict[str, str]:
    rows = re.findall(r"^\| `(LM_BILLING_[A-Z_]+)` \| `([^`]*)` \|", README, re.M)
    return dict(rows)


@pytest.mark.parametrize(("key", "default"), [(k, d) for k, d, _ in CONFIG], ids=lambda v: str(v))
def test_readme_default_is_the_codes(key: str, default: object) -> None:
    shown = _table_defaults().get(key)
    assert shown is not None, f"README's configuration table has no row for {key}"
    assert ast.literal_eval(shown) == default, (key, shown, default)


@pytest.mark.parametrize("prefix", ["billing", "", "/bill ing", "/billing?x", "//billing", 7])
def test_bad_url_prefix_is_refused_with_our_message(tmp_path: Path, prefix: object) -> None:
    app = Flask("bad_prefix")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/x.sqlite",
                      LM_BILLING_URL_PREFIX=prefix)
    with pytest.raises(ValueError, match=r"LM_BILLING_URL_PREFIX must be a URL path that starts"):
        LMBilling(app)


@pytest.mark.parametrize("prefix", ["/billing", "/admin/billing", "/billing/"])
def test_good_url_prefixes_mount_pages_and_api(tmp_path: Path, prefix: str) -> None:
    from conftest import build_app

    app = build_app(f"sqlite:///{tmp_path}/ok.sqlite", LM_BILLING_URL_PREFIX=prefix)
    base = prefix.rstrip("/")
    client = app.test_client()
    assert client.get(f"{base}/").status_code == 200
    assert client.get(f"{base}/api/v1/servers").status_code == 200


def test_the_hardening_map_names_only_tests_that_exist() -> None:
    """docs/operations.md's "What the hardening tests prove": every tests/FILE::TEST it
    names is a test function of that file (a renamed or deleted test breaks the map)."""
    text = (Path(__file__).parent.parent / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## What the hardening tests prove", 1)[1]
    named = re.findall(r"`tests/(test_\w+\.py)::(test_\w+)`", section)
    assert len(named) >= 40
    missing = []
    for file, test in named:
        source = (Path(__file__).parent / file).read_text(encoding="utf-8")
        if not re.search(rf"^(async )?def {test}\(", source, re.M):
            missing.append(f"{file}::{test}")
    assert not missing, missing
