"""The wheel and sdist: what they carry, and that an installed wheel (not the checkout) can
migrate the demo's database and show its CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from lm_billing_plugin.migrate import script_location

ROOT = Path(__file__).resolve().parent.parent
# Built from a copy, so the checkout gets no build/ or egg-info that others' runs would see.
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "instance",
    "test-artifacts",
)


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_wheel_and_sdist_carry_everything_and_the_installed_wheel_works(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), "."], source)

    (wheel,) = dist.glob("*.whl")
    wheel_names = zipfile.ZipFile(wheel).namelist()
    for pattern in (
        "lm_billing_plugin/templates/lm_billing/base.html",
        "lm_billing_plugin/templates/lm_billing/servers.html",
        "lm_billing_plugin/static/lm_billing/lm_billing.css",
        "lm_billing_plugin/py.typed",
        "lm_billing_plugin/demo/templates/demo/base.html",
        "lm_billing_plugin/demo/templates/demo/login.html",
        "lm_billing_plugin/demo/static/demo/portal.css",
        "lm_billing_plugin/migrations/env.py",
        "lm_billing_plugin/migrations/script.py.mako",
        "lm_billing_plugin/migrations/versions/0001_*.py",
    ):
        assert any(fnmatch(name, pattern) for name in wheel_names), f"wheel lacks {pattern}"
    # Every template of the checkout is in the wheel, not only the ones listed above.
    for template in (ROOT / "lm_billing_plugin" / "templates").rglob("*.html"):
        assert str(template.relative_to(ROOT)) in wheel_names
    assert not any(name.startswith("tests/") for name in wheel_names)

    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"tests/conftest.py", "tests/test_packaging.py", "migrations/env.py"} <= sdist_names

    target = tmp_path / "site"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",  # the wheel alone: no registry, no network
            "--target",
            str(target),
            str(wheel),
        ],
        tmp_path,
        {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "FLASK_INSTANCE_PATH": str(tmp_path / "instance"),
        "FLASK_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'installed.sqlite'}",
    }
    where = run(
        [
            sys.executable,
            "-c",
            "import lm_billing_plugin, lm_billing_plugin.migrate as m; "
            "print(lm_billing_plugin.__file__); print(m.script_location())",
        ],
        outside,
        env,
    ).split()
    assert all(Path(path).is_relative_to(target) for path in where), where

    flask = [sys.executable, "-m", "flask", "--app", "lm_billing_plugin.demo:create_app"]
    out = run([*flask, "lm-billing", "db", "upgrade"], outside, env)
    head = ScriptDirectory(script_location()).get_current_head()
    assert f"lm-billing schema at {head}" in out
    assert (tmp_path / "installed.sqlite").stat().st_size > 0
    # The demo made its secrets in the instance folder it was given, not beside the package.
    assert (tmp_path / "instance" / "secret_key").exists()
    help_text = run([*flask, "lm-billing", "--help"], outside, env)
    assert "db" in help_text and "generate-key" in help_text
