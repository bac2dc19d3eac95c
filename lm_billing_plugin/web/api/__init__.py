"""The JSON API under <LM_BILLING_URL_PREFIX>/api/v1/: one module per subject in resources/,
all on one blueprint (core.py), with its OpenAPI document generated from the same routes."""

from __future__ import annotations

from flask import Flask

from . import openapi  # noqa: F401  (last: serves the document of all the above)
from .core import API_PREFIX, api, exempt_from_host_csrf, unrouted_as_json

# Adding a resource: a module in resources/ whose views use core.route() (its OpenAPI
# operation comes with it), imported here. The URL-map tests and the OpenAPI test see it.
from .resources import (  # noqa: F401  (they register routes)
    bills,
    catalog,
    deletions,
    problems,
    runs,
    servers,
)


def install(app: Flask, url_prefix: str) -> None:
    """Mount the API on ``app`` under the Billing pages' prefix."""
    root = url_prefix.rstrip("/") + API_PREFIX
    app.register_blueprint(api, url_prefix=root)
    app.before_request(unrouted_as_json(root))
    exempt_from_host_csrf(app)
    # A host that sets up CSRFProtect after LMBilling: exempt there too, on the first request
    # (this hook runs before CSRFProtect's, as it was registered first).
    app.before_request(lambda: exempt_from_host_csrf(app))


__all__ = ["API_PREFIX", "api", "install"]
