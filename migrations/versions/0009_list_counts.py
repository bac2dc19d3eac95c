"""Plan limits at any fleet size (issue 12): lm_billing_list_count, the active lists of each
server and site — how many, their members, the largest list's — which the Plan limits report
reads instead of every list; lm_billing_list indexed by (name, server_id), for Usage per list
of one month sorted by name. The upgrade fills the counts from the lists there are,
set-based; the downgrade drops both.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-22 10:00:00.000000

Self-contained on purpose, like 0001: no import of the plugin's models.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}
_TABLE = "lm_billing_list_count"


def _name(length: int) -> sa.types.TypeEngine[str]:
    # As 0001: names compare exactly (binary NO PAD collation on MariaDB).
    variant = mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_nopad_bin")
    return sa.String(length).with_variant(variant, "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("site_name", _name(255), nullable=False),
        sa.Column("lists", sa.Integer(), nullable=False),
        sa.Column("members", sa.BigInteger(), nullable=False),
        sa.Column("largest", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["server_id"], ["lm_billing_server.id"],
                                name=op.f(f"fk_{_TABLE}_server_id_lm_billing_server")),
        sa.PrimaryKeyConstraint("server_id", "site_name", name=op.f(f"pk_{_TABLE}")),
        **_OPTIONS,
    )
    # engine.rollup.list_count_select, written out: one INSERT ... SELECT.
    lists = sa.table("lm_billing_list", sa.column("server_id"), sa.column("site_name"),
                     sa.column("members"), sa.column("status"))
    counts = sa.table(_TABLE, sa.column("server_id"), sa.column("site_name"),
                      sa.column("lists"), sa.column("members"), sa.column("largest"))
    select = (
        sa.select(lists.c.server_id, lists.c.site_name, sa.func.count(),
                  sa.func.coalesce(sa.func.sum(lists.c.members), 0),
                  sa.func.coalesce(sa.func.max(lists.c.members), 0))
        .where(lists.c.status == "active")
        .group_by(lists.c.server_id, lists.c.site_name)
    )
    op.execute(counts.insert().from_select(
        ["server_id", "site_name", "lists", "members", "largest"], select))
    op.create_index("ix_lm_billing_list_name_server", "lm_billing_list", ["name", "server_id"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_lm_billing_list_name_server", table_name="lm_billing_list")
    op.drop_table(_TABLE)
