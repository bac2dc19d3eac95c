"""Deprecated alias: the notifications (signals trouble_found and run_finished, Alert) moved to
lm_billing_plugin.schedule.notify."""

from __future__ import annotations

from .moved import alias

# Each name is forwarded with a DeprecationWarning saying where it lives now.
__getattr__ = alias(
    __name__,
    ["lm_billing_plugin.schedule.notify"],
)
