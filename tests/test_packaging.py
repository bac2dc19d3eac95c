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
        # The German catalog, compiled (Flask-Babel reads the .mo) and its source.
        "lm_billing_plugin/translations/messages.pot",
        "lm_billing_plugin/translations/de/LC_MESSAGES/lm_billing.mo",
        "lm_billing_plugin/translations/de/LC_MESSAGES/lm_billing.po",
    ):
        assert any(fnmatch(name, pattern) for name in wheel_names), f"wheel lacks {pattern}"
    # Every template of the checkout is in the wheel, not only the ones listed above.
    for template in (ROOT / "lm_billing_plugin" / "templates").rglob("*.html"):
        assert str(template.relative_to(ROOT)) in wheel_names
    assert not any(name.startswith("tests/") for name in wheel_names)
    check_wheel_metadata(wheel)

    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"tests/conftest.py", "tests/test_packaging.py", "migrations/env.py"} <= sdist_names
    assert "LICENSE" in sdist_names

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


def check_wheel_metadata(wheel: Path) -> None:
    """The metadata pyproject.toml's [project] declares, as the wheel carries it (PEP 639)."""
    from email.parser import HeaderParser

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = HeaderParser().parsestr(archive.read(metadata_name).decode("utf-8"))
        (license_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        license_text = archive.read(license_name).decode("utf-8")
    assert license_text.startswith("MIT License")
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert metadata["Name"] == "lm-billing-plugin"
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Requires-Python"] == ">=3.11"
    classifiers = set(metadata.get_all("Classifier") or ())
    for classifier in (
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Environment :: Web Environment",
        "Framework :: Flask",
        "Typing :: Typed",
    ):
        assert classifier in classifiers, classifier
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert any(c.startswith("Topic :: ") for c in classifiers)
    # A License-Expression replaces the deprecated license classifiers.
    assert not any(c.startswith("License :: ") for c in classifiers)
    # No Project-URL until the project has a real public address: none is better than a
    # made-up one that pip and PyPI would show as the project's home.
    assert not metadata.get_all("Project-URL")
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("apispec") for r in requires)
    extras = set(metadata.get_all("Provides-Extra") or ())
    assert {"test", "dev", "demo"} <= extras
    # Test tools only in `test`; the lint tools in `dev`.
    test_extra = [r for r in requires if 'extra == "test"' in r]
    dev_extra = [r for r in requires if 'extra == "dev"' in r]
    assert any(r.startswith("openapi-spec-validator") for r in test_extra)
    for tool in ("ruff", "mypy", "import-linter"):
        assert not any(r.startswith(tool) for r in test_extra), tool
        assert any(r.startswith(tool) for r in dev_extra), tool


def test_setup_py_repeats_no_project_field() -> None:
    """setup.py keeps the packages and their data; every field [project] gives is there only."""
    import ast
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
               and getattr(n.func, "id", None) == "setup"]
    given = {k.arg for k in call.keywords}
    assert given == {"packages", "package_dir", "package_data", "include_package_data",
                     "zip_safe"}
    renamed = {"dependencies": "install_requires", "optional-dependencies": "extras_require",
               "scripts": "entry_points", "requires-python": "python_requires",
               "readme": "long_description"}
    assert not {renamed.get(k, k.replace("-", "_")) for k in project} & given
