"""The Billing pages, one module per subject, all on the lm_billing blueprint. ROUTES is their
URL map; each module is imported on the first request to one of its pages, not at init_app."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any, NamedTuple

from flask import Blueprint

from ..access import action_of, requires
from ..l10n import billing_day, format_currency, format_unit_price

GET: tuple[str, ...] = ("GET",)
POST: tuple[str, ...] = ("POST",)
GET_POST: tuple[str, ...] = ("GET", "POST")


class Route(NamedTuple):
    rule: str
    endpoint: str
    methods: tuple[str, ...] = GET
    # The action the view's @requires names (unmarked: view): the access guard and the menus
    # read it before the module is imported; LazyView.load() refuses a view that disagrees.
    action: str = "view"
    # The view function's name in its module, when it is not the endpoint.
    view: str | None = None


# module -> its pages. A page added to a module goes here too, or it has no URL (the access
# and CSRF matrices are made from the URL map, so they would not see it either).
ROUTES: dict[str, tuple[Route, ...]] = {
    "overview": (Route("/overview", "overview"),),
    "servers": (
        Route("/", "servers"),
        Route("/servers/new", "server_new", GET_POST, "edit"),
        Route("/servers/<int:server_id>", "server_detail"),
        Route("/servers/<int:server_id>/edit", "server_edit", GET_POST, "edit"),
        Route("/servers/<int:server_id>/delete", "server_delete", GET_POST, "edit"),
    ),
    "server_actions": (
        Route("/servers/<int:server_id>/check", "server_check", POST, "run"),
        Route("/servers/<int:server_id>/enable-logging", "server_enable_logging", POST, "run"),
        Route("/servers/<int:server_id>/assign", "server_assign", POST, "edit"),
        Route("/servers/validate", "servers_validate", POST, "run"),
        Route("/servers/sync", "servers_sync", POST, "run"),
    ),
    "problems": (
        Route("/errors", "problems"),
        Route("/errors.csv", "problems_csv"),
        Route("/errors/fix", "problems_fix", POST, "run"),
    ),
    "runs": (
        Route("/batches/<int:batch_id>", "batch"),
        Route("/batches/<int:batch_id>.json", "batch_json"),
    ),
    "customers": (
        Route("/customers", "customers"),
        Route("/customers/new", "customer_new", GET_POST, "edit"),
        Route("/customers/<int:customer_id>", "customer_detail"),
        Route("/customers/<int:customer_id>/edit", "customer_edit", GET_POST, "edit"),
        Route("/customers/<int:customer_id>/groups/new", "group_new", GET_POST, "edit"),
        Route("/groups/<int:group_id>/edit", "group_edit", GET_POST, "edit"),
    ),
    "plans": (
        Route("/plans", "plans"),
        Route("/plans/new", "plan_new", GET_POST, "edit"),
        Route("/plans/<int:plan_id>/edit", "plan_edit", GET_POST, "edit"),
    ),
    "assign": (
        Route("/assign", "assign", GET_POST, "edit"),
        Route("/unassign", "unassign", POST, "edit"),
    ),
    "background": (
        Route("/background", "background"),
        Route("/background/run-now", "background_run_now", POST, "run"),
    ),
    "reports": (
        Route("/reports", "reports"),
        Route("/reports/usage", "report_usage", view="usage"),
        Route("/reports/revenue", "report_revenue", view="revenue_page"),
        Route("/reports/limits", "report_limits", view="limits_page"),
    ),
    "utilities": (
        Route("/utilities", "utilities"),
        Route("/utilities/find-admin", "find_admin"),
        Route("/utilities/find-member", "find_member"),
        Route("/utilities/find-member/delete", "delete_members", POST, "run"),
        Route("/utilities/deletions/<int:delete_run_id>", "delete_run", GET, "run"),
        Route("/utilities/deletions/<int:delete_run_id>.csv", "delete_run_csv", GET, "run"),
    ),
    "charges": (
        Route("/charges", "charges"),
        Route("/charges/new", "charge_new", GET_POST, "edit"),
        Route("/charges/<int:charge_id>/edit", "charge_edit", GET_POST, "edit"),
        Route("/charges/<int:charge_id>/delete", "charge_delete", GET_POST, "edit"),
        Route("/groups/<int:group_id>/charges/new", "group_charge_new", GET_POST, "edit"),
        Route("/group-charges/<int:group_charge_id>/end", "group_charge_end", POST, "edit"),
        Route("/group-charges/<int:group_charge_id>/remove", "group_charge_remove", POST,
              "edit"),
    ),
    "invoice_templates": (
        Route("/invoice-templates", "invoice_templates"),
        Route("/invoice-templates/new", "invoice_template_new", GET_POST, "edit"),
        Route("/invoice-templates/<int:template_id>/edit", "invoice_template_edit", GET_POST,
              "edit"),
    ),
    "terminate": (
        Route("/lists/terminate", "lists_terminate", POST, "edit"),
        Route("/customers/<int:customer_id>/delete", "customer_delete", GET_POST, "edit"),
        Route("/customers/validate", "customer_checks"),
    ),
    "bills": (
        Route("/bills", "bills"),
        Route("/bills/run", "run_billing", GET_POST, "run"),
        Route("/bills/runs/<int:bill_run_id>", "bill_run"),
        Route("/invoices/<int:invoice_id>", "invoice"),
        Route("/invoices/<int:invoice_id>.pdf", "invoice_pdf"),
        Route("/invoices/<int:invoice_id>/void", "invoice_void", POST, "edit"),
        Route("/invoices/<int:invoice_id>/rerun", "invoice_rerun", POST, "run"),
        Route("/invoices/export", "invoice_export"),
    ),
    "bill_send": (
        Route("/bills/send", "bill_send", GET_POST, "run"),
        Route("/bills/sends/<int:send_run_id>", "bill_send_run"),
        Route("/bills/sends/<int:send_run_id>/resend", "bill_send_resend", POST, "run"),
    ),
    "groups": (Route("/groups", "billing_groups"),),
    "audit_log": (
        Route("/audit", "audit_log"),
        Route("/audit.csv", "audit_log_csv"),
    ),
}


class LazyView:
    """A page's view function, imported on the first request to it (Flask's "Lazily Loading
    Views"): a CLI command or a worker that never shows the page pays nothing for its module,
    forms and services. Carries the names Flask, Flask-WTF and Flask-Limiter read off a view
    (``__module__``, ``__name__``) and the route's action, so nothing here imports it early."""

    __name__: str
    __qualname__: str

    def __init__(self, module: str, name: str, action: str) -> None:
        self.__module__ = f"{__name__}.{module}"
        self.__name__ = self.__qualname__ = name
        self.action = action
        requires(action)(self)
        self._view: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        """The view function itself (its module is imported the first time)."""
        view = self._view
        if view is None:
            view = getattr(import_module(self.__module__), self.__name__)
            if action_of(view) != self.action:
                # The guard let the request in on the action ROUTES names: a view that
                # needs another one must not run on that decision.
                raise RuntimeError(
                    f"{self.__module__}.{self.__name__} requires {action_of(view)!r} but its "
                    f"route in lm_billing_plugin.web.views.ROUTES says {self.action!r}"
                )
            self._view = view
        return view

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<LazyView {self.__module__}.{self.__name__}>"


def register(blueprint: Blueprint) -> None:
    for module, routes in ROUTES.items():
        for route in routes:
            view = LazyView(module, route.view or route.endpoint, route.action)
            blueprint.add_url_rule(route.rule, route.endpoint, view, methods=list(route.methods))
    # E-mailed and PDF invoices use the filter too (billing.sending), outside any page.
    blueprint.add_app_template_filter(format_currency, "lmb_money")
    blueprint.add_app_template_filter(format_unit_price, "lmb_unit_price")
    blueprint.add_app_template_filter(billing_day, "lmb_billing_day")
