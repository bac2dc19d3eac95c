"""API resource: customers, billing groups and hosting plans (read), and assignments (list,
assign, unassign) through catalog.assignment, the functions the Assign page calls."""

from __future__ import annotations

from datetime import date
from typing import Any

import sqlalchemy as sa
from flask import Response, jsonify, request

from ....models import Assignment, BillingGroup, Customer, HostingPlan
from ....state import get_state
from ...access import actor_name
from ..core import (
    PAGE_QUERY,
    PAGE_SCHEMA,
    ApiError,
    field,
    get_or_404,
    id_filters,
    id_list,
    invalid,
    json_body,
    page,
    route,
    row_dict,
    schema,
)

CUSTOMER_FIELDS = ("id", "company", "contact_name", "email", "is_active", "payment_method",
                   "notes", "customer_type", "start_date", "end_date", "created_at")
GROUP_FIELDS = ("id", "customer_id", "name", "plan_id", "plan_start", "plan_end", "created_at")
PLAN_FIELDS = ("id", "name", "description", "max_members", "max_members_per_list", "max_lists",
               "max_lists_per_site", "max_sites", "bill_by_list", "billing_method",
               "monthly_price", "overage_cpm", "included_messages", "max_message_size_kb",
               "monthly_price_per_server", "cost_per_gb", "included_gb")
ASSIGNMENT_FIELDS = ("id", "group_id", "object_type", "server_id", "site_id", "list_id",
                     "start_date", "end_date", "is_free", "created_at")

CUSTOMER = schema("Customer", {"type": "object", "properties": {
    name: {} for name in CUSTOMER_FIELDS}})
GROUP = schema("BillingGroup", {"type": "object", "properties": {
    name: {} for name in GROUP_FIELDS}})
PLAN = schema("HostingPlan", {"type": "object", "description": "Prices are exact decimals, "
              "sent as strings.", "properties": {name: {} for name in PLAN_FIELDS}})
ASSIGNMENT = schema("Assignment", {"type": "object", "properties": {
    name: {} for name in ASSIGNMENT_FIELDS}})
ASSIGN = schema("AssignRequest", {"type": "object", "required": ["group_id", "server_id"],
                                  "properties": {
    "group_id": {"type": "integer"}, "server_id": {"type": "integer"},
    "site_ids": {"type": "array", "items": {"type": "integer"}},
    "list_ids": {"type": "array", "items": {"type": "integer"}},
    "whole_server": {"type": "boolean"},
    "start": {"type": "string", "format": "date", "description": "Default: today."}}})
COUNT = {"type": "object", "properties": {"created": {"type": "integer"},
                                          "ended": {"type": "integer"}}}


def _get(model: type[Any], object_id: int, what: str, fields: tuple[str, ...]) -> Response:
    return jsonify(row_dict(get_or_404(model, object_id, what), fields))


@route("/customers", "GET", summary="Customers (id order)", tag="catalog", query=PAGE_QUERY,
       responses={200: ("A page of customers", PAGE_SCHEMA)})
def customers_list() -> Response:
    return page(sa.select(Customer), Customer.id, lambda c: row_dict(c, CUSTOMER_FIELDS))


@route("/customers/<int:customer_id>", "GET", summary="One customer", tag="catalog",
       responses={200: ("The customer", CUSTOMER), 404: ("No such customer", None)})
def customer_get(customer_id: int) -> Response:
    return _get(Customer, customer_id, "customer", CUSTOMER_FIELDS)


@route("/groups", "GET", summary="Billing groups (id order)", tag="catalog",
       query=(*PAGE_QUERY, ("customer_id", "integer", "Only this customer's groups.")),
       responses={200: ("A page of groups", PAGE_SCHEMA)})
def groups_list() -> Response:
    query = id_filters(sa.select(BillingGroup), customer_id=BillingGroup.customer_id)
    return page(query, BillingGroup.id, lambda g: row_dict(g, GROUP_FIELDS))


@route("/groups/<int:group_id>", "GET", summary="One billing group", tag="catalog",
       responses={200: ("The group", GROUP), 404: ("No such group", None)})
def group_get(group_id: int) -> Response:
    return _get(BillingGroup, group_id, "billing group", GROUP_FIELDS)


@route("/plans", "GET", summary="Hosting plans (id order)", tag="catalog", query=PAGE_QUERY,
       responses={200: ("A page of plans", PAGE_SCHEMA)})
def plans_list() -> Response:
    return page(sa.select(HostingPlan), HostingPlan.id, lambda p: row_dict(p, PLAN_FIELDS))


@route("/plans/<int:plan_id>", "GET", summary="One hosting plan", tag="catalog",
       responses={200: ("The plan", PLAN), 404: ("No such plan", None)})
def plan_get(plan_id: int) -> Response:
    return _get(HostingPlan, plan_id, "hosting plan", PLAN_FIELDS)


@route("/assignments", "GET", summary="Assignments (id order)", tag="catalog",
       query=(*PAGE_QUERY, ("group_id", "integer", "Only this group's."),
              ("server_id", "integer", "Only on this server."),
              ("active", "boolean", "true: only those in force today.")),
       responses={200: ("A page of assignments", PAGE_SCHEMA)})
def assignments_list() -> Response:
    query = id_filters(sa.select(Assignment), group_id=Assignment.group_id,
                       server_id=Assignment.server_id)
    active = request.args.get("active")
    if active not in (None, "true", "false"):
        raise ApiError(400, "active is true or false.")
    if active is not None:
        today = get_state().settings.billing_today()
        in_force = sa.and_(Assignment.start_date <= today,
                           sa.or_(Assignment.end_date.is_(None), Assignment.end_date > today))
        query = query.where(in_force if active == "true" else sa.not_(in_force))
    return page(query, Assignment.id, lambda a: row_dict(a, ASSIGNMENT_FIELDS))


@route("/assignments/<int:assignment_id>", "GET", summary="One assignment", tag="catalog",
       responses={200: ("The assignment", ASSIGNMENT), 404: ("No such assignment", None)})
def assignment_get(assignment_id: int) -> Response:
    return _get(Assignment, assignment_id, "assignment", ASSIGNMENT_FIELDS)


def _refusal(exc: Exception) -> ApiError:
    from ....catalog.assignment import GateError

    if isinstance(exc, GateError):
        return ApiError(409, str(exc), code="gate")
    return ApiError(422, str(exc))


@route("/assignments", "POST", action="edit", tag="catalog", request_schema=ASSIGN,
       summary="Assign lists, sites or a whole server to a billing group",
       responses={201: ("How many assignments were created", COUNT),
                  409: ("The gate: validate and sync first", None), 422: ("Invalid", None)})
def assignment_create() -> Response:
    body = json_body()
    errors: dict[str, str] = {}
    group_id = field(body, "group_id", int, errors, required=True)
    server_id = field(body, "server_id", int, errors, required=True)
    site_ids = id_list(body, "site_ids", errors) or []
    list_ids = id_list(body, "list_ids", errors) or []
    whole = bool(field(body, "whole_server", bool, errors))
    start_text = field(body, "start", str, errors)
    start: date | None = None
    if start_text is not None:
        try:
            start = date.fromisoformat(start_text)
        except ValueError:
            errors["start"] = "A date, YYYY-MM-DD."
    known = {"group_id", "server_id", "site_ids", "list_ids", "whole_server", "start"}
    for name in sorted(set(body) - known):
        errors[name] = "Unknown field."
    invalid(errors)
    # The assignment service (and the gate's checks) when an assignment is made, not when
    # init_app mounts the API.
    from ....catalog.assignment import AssignmentError, GateError, assign

    try:
        created = assign(group_id, server_id=server_id, site_ids=site_ids, list_ids=list_ids,
                         whole_server=whole, actor=actor_name(), start=start)
    except (GateError, AssignmentError) as exc:
        raise _refusal(exc) from None
    response = jsonify(created=created)
    response.status_code = 201
    return response


@route("/assignments/<int:assignment_id>", "DELETE", action="edit", tag="catalog",
       summary="Unassign: end the assignment today (history is kept)",
       responses={200: ("How many were ended", COUNT), 404: ("No such assignment", None),
                  409: ("The gate: validate and sync first", None)})
def assignment_delete(assignment_id: int) -> Response:
    get_or_404(Assignment, assignment_id, "assignment")
    from ....catalog.assignment import AssignmentError, GateError, unassign

    try:
        ended = unassign([assignment_id], actor=actor_name())
    except (GateError, AssignmentError) as exc:
        raise _refusal(exc) from None
    return jsonify(ended=ended)
