"""Deprecated alias: the engine services moved to lm_billing_plugin.engine.batches (validate,
sync, batches), engine.fixes (fix) and catalog.assignment (assign, unassign, GateError)."""

from __future__ import annotations

from .moved import alias

# Each name is forwarded with a DeprecationWarning saying where it lives now.
__getattr__ = alias(
    __name__,
    ["lm_billing_plugin.engine.batches", "lm_billing_plugin.engine.fixes",
            "lm_billing_plugin.catalog.assignment"],
)
