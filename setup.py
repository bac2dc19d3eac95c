"""Packaging for lm-billing-plugin: the ListManager Billing: Servers pages for Flask portals."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="lm-billing-plugin",
    version="0.1.0",
    description=(
        "ListManager Billing: Servers pages for a Flask admin portal: add, check, "
        "validate, sync and fix hosting servers over TclPort."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # The top-level migrations/ folder ships inside the wheel as
    # lm_billing_plugin.migrations, so installed hosts can upgrade without a checkout.
    packages=[
        *find_packages(include=["lm_billing_plugin", "lm_billing_plugin.*"]),
        "lm_billing_plugin.migrations",
        "lm_billing_plugin.migrations.versions",
    ],
    package_dir={"lm_billing_plugin.migrations": "migrations"},
    package_data={
        "lm_billing_plugin": [
            "py.typed",
            "templates/lm_billing/**/*.html",
            "static/lm_billing/**/*",
            "demo/templates/demo/**/*.html",
        ],
        "lm_billing_plugin.migrations": ["script.py.mako", "README"],
    },
    include_package_data=False,
    zip_safe=False,
    install_requires=[
        "flask>=3.0",
        "flask-sqlalchemy>=3.1",
        "flask-wtf>=1.2",
        "sqlalchemy>=2.0",
        "alembic>=1.13",
        "apscheduler>=3.10,<4",
        "cryptography>=42",
        "click>=8.1",
        # Money on invoices is formatted for LM_BILLING_CURRENCY with Babel.
        "babel>=2.12",
    ],
    extras_require={
        "login": ["flask-login>=0.6"],
        # PDF invoices (WeasyPrint needs the pango library: Debian libpango-1.0-0).
        "pdf": ["weasyprint>=62"],
        "demo": ["flask-login>=0.6"],
        "postgres": ["psycopg[binary]>=3.1"],
        "mariadb": ["pymysql>=1.1"],
        "test": [
            "flask-login>=0.6",
            "flask-admin>=2.0",
            "flask-appbuilder>=5.0",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "playwright>=1.45",
            "psycopg[binary]>=3.1",
            "pymysql>=1.1",
            "aiosmtpd>=1.4",
            "gunicorn>=22",
            "build>=1.2",
            # tests/test_packaging.py builds with --no-isolation, so the backend must be here.
            "setuptools>=70.1",
            "ruff>=0.5",
            "mypy>=1.10",
            "import-linter>=2.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "lm-billing-hostsim = lm_billing_plugin.testing.simulator:main",
        ],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Typing :: Typed",
    ],
)
