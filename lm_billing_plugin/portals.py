"""Deprecated alias: the portal adapters and their base templates (FLASK_ADMIN_TEMPLATE,
APPBUILDER_TEMPLATE) moved to lm_billing_plugin.web.portals."""

from __future__ import annotations

from .moved import alias

# Each name is forwarded with a DeprecationWarning saying where it lives now.
__getattr__ = alias(
    __name__,
    ["lm_billing_plugin.web.portals"],
)
