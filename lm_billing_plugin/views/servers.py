"""Billing: Servers — the plugin's index."""

from __future__ import annotations

from flask import Blueprint, render_template
from sqlalchemy import select

from ..extension import get_state
from ..models import Server


def servers() -> str:
    session = get_state().session
    rows = session.scalars(select(Server).order_by(Server.name)).all()
    return render_template("lm_billing/servers.html", servers=rows)


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/", "servers", servers)
