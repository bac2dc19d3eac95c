"""Packaging for lm-billing-plugin: what pyproject.toml's [project] cannot say (the packages,
the top-level migrations/ folder mapped into the wheel, package data); the metadata is there."""

from __future__ import annotations

from setuptools import find_packages, setup

setup(
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
            "translations/messages.pot",
            "translations/*/LC_MESSAGES/*.po",
            "translations/*/LC_MESSAGES/*.mo",
            "demo/static/demo/**/*",
        ],
        "lm_billing_plugin.migrations": ["script.py.mako", "README"],
    },
    include_package_data=False,
    zip_safe=False,
)
