"""The "Billing" menu a host portal shows: its entries, and `lm_billing_menu()` for Jinja
(portals.py mounts the same entries in Flask-Admin and Flask-AppBuilder menus)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, url_for

from ..i18n import N_
from .access import action_of, is_allowed


@dataclass(frozen=True, slots=True)
class MenuEntry:
    label: str
    endpoint: str

    @property
    def url(self) -> str:
        return url_for(self.endpoint)


MENU: tuple[MenuEntry, ...] = (
    MenuEntry(N_("Overview"), "lm_billing.overview"),
    MenuEntry(N_("Servers"), "lm_billing.servers"),
    MenuEntry(N_("Errors"), "lm_billing.problems"),
    MenuEntry(N_("Customers"), "lm_billing.customers"),
    MenuEntry(N_("Billing Groups"), "lm_billing.billing_groups"),
    MenuEntry(N_("Hosting Plans"), "lm_billing.plans"),
    MenuEntry(N_("Assign Lists to Customers"), "lm_billing.assign"),
    MenuEntry(N_("Reports"), "lm_billing.reports"),
    MenuEntry(N_("Utilities"), "lm_billing.utilities"),
    MenuEntry(N_("Additional Charges"), "lm_billing.charges"),
    MenuEntry(N_("Invoice Templates"), "lm_billing.invoice_templates"),
    MenuEntry(N_("Background validation"), "lm_billing.background"),
    MenuEntry(N_("Audit log"), "lm_billing.audit_log"),
)


def menu_entries() -> list[MenuEntry]:
    """The Billing menu for the current user: empty when they may not view billing.

    Exposed to templates as ``lm_billing_menu()``.
    """
    try:
        allowed = is_allowed("view")
    except Exception:  # an app without a request user (e.g. rendering outside a request)
        return []
    if not allowed:
        return []
    # Pages a host has switched off (or that a later version adds) simply drop out, and so
    # do pages that need more than "view" (Assign: "edit") for a user without it.
    views = current_app.view_functions
    return [entry for entry in MENU if entry.endpoint in views
            and (action_of(views[entry.endpoint]) == "view"
                 or is_allowed(action_of(views[entry.endpoint])))]
