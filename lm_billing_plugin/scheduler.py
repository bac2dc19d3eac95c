"""Deprecated alias: the scheduler moved to lm_billing_plugin.schedule: claims (schedule_summary,
request_run_now, TASK), service (SchedulerService) and autostart."""

from __future__ import annotations

from .moved import alias

# Each name is forwarded with a DeprecationWarning saying where it lives now.
__getattr__ = alias(
    __name__,
    ["lm_billing_plugin.schedule.claims", "lm_billing_plugin.schedule.service",
            "lm_billing_plugin.schedule.autostart"],
)
