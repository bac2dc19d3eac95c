"""Usage per list over a range of months and Usage per site at any fleet size (issue 12):
lm_billing_usage_previous, per server and month how many lists had their previous usage in
which month, so the number of lists with usage in a range is read from at most months² rows
instead of one probe per list; lm_billing_usage_site_rollup, the sums of each site's usage
rows per server and month (a list's rows where the list is now). The upgrade fills both from
the Usage rows there are, set-based; the downgrade drops them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 19:00:00.000000

Self-contained on purpose, like 0001: no import of the plugin's models.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}
_TABLE = "lm_billing_usage_previous"
_NO_PREVIOUS = date(1000, 1, 1)  # models.NO_PREVIOUS
_SITES = "lm_billing_usage_site_rollup"


def _name(length: int) -> sa.types.TypeEngine[str]:
    # As 0001: names compare exactly (binary NO PAD collation on MariaDB).
    variant = mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_nopad_bin")
    return sa.String(length).with_variant(variant, "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("server_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("previous", sa.Date(), nullable=False),
        sa.Column("lists", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["server_id"], ["lm_billing_server.id"],
                                name=op.f(f"fk_{_TABLE}_server_id_lm_billing_server")),
        sa.PrimaryKeyConstraint("server_id", "period", "previous", name=op.f(f"pk_{_TABLE}")),
        **_OPTIONS,
    )
    # engine.rollup.previous_select, written out: one INSERT ... SELECT.
    usage = sa.table("lm_billing_usage", sa.column("server_id"), sa.column("list_id"),
                     sa.column("period"))
    earlier = usage.alias("earlier")
    previous = sa.func.coalesce(
        sa.select(sa.func.max(earlier.c.period))
        .where(earlier.c.list_id == usage.c.list_id, earlier.c.period < usage.c.period)
        .scalar_subquery(),
        sa.literal(_NO_PREVIOUS, sa.Date()),
    )
    each = sa.select(usage.c.server_id.label("server_id"), usage.c.period.label("period"),
                     previous.label("previous")).subquery("each")
    table = sa.table(_TABLE, sa.column("server_id"), sa.column("period"),
                     sa.column("previous"), sa.column("lists"))
    op.execute(table.insert().from_select(
        ["server_id", "period", "previous", "lists"],
        sa.select(each.c.server_id, each.c.period, each.c.previous, sa.func.count())
        .group_by(each.c.server_id, each.c.period, each.c.previous)))
    op.create_table(
        _SITES,
        sa.Column("server_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("site_name", _name(255), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("lists", sa.Integer(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("recipients", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["server_id"], ["lm_billing_server.id"],
                                name=op.f(f"fk_{_SITES}_server_id_lm_billing_server")),
        sa.PrimaryKeyConstraint("server_id", "site_name", "period", name=op.f(f"pk_{_SITES}")),
        **_OPTIONS,
    )
    op.create_index("ix_lm_billing_usage_site_rollup_period", _SITES, ["period"], unique=False)
    # engine.rollup.site_rollup_select, written out.
    figures = sa.table("lm_billing_usage", sa.column("server_id"), sa.column("list_id"),
                       sa.column("period"), sa.column("messages"), sa.column("recipients"),
                       sa.column("bytes"))
    lists = sa.table("lm_billing_list", sa.column("id"), sa.column("site_name"))
    sites = sa.table(_SITES, sa.column("server_id"), sa.column("site_name"),
                     sa.column("period"), sa.column("lists"), sa.column("messages"),
                     sa.column("recipients"), sa.column("bytes"))
    op.execute(sites.insert().from_select(
        ["server_id", "site_name", "period", "lists", "messages", "recipients", "bytes"],
        sa.select(figures.c.server_id, lists.c.site_name, figures.c.period, sa.func.count(),
                  sa.func.coalesce(sa.func.sum(figures.c.messages), 0),
                  sa.func.coalesce(sa.func.sum(figures.c.recipients), 0),
                  sa.func.coalesce(sa.func.sum(figures.c.bytes), 0))
        .select_from(figures).join(lists, lists.c.id == figures.c.list_id)
        .group_by(figures.c.server_id, lists.c.site_name, figures.c.period)))


def downgrade() -> None:
    op.drop_index("ix_lm_billing_usage_site_rollup_period", table_name=_SITES)
    op.drop_table(_SITES)
    op.drop_table(_TABLE)
