"""Reports (issue 16): usage rolled up per server and month (lm_billing_usage_rollup), written
with the usage rows; Usage indexed by month, and by KB per recipient (the few rows whose size
can count more message units than recipients). The upgrade fills both from the Usage rows
there are, set-based; the downgrade drops them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 10:00:00.000000

Self-contained on purpose, like 0001: no import of the plugin's models.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}
_USAGE = "lm_billing_usage"
_TABLE = "lm_billing_usage_rollup"
_KB_CAP = 2**31 - 1  # models.KB_CAP


def _utc() -> Any:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.add_column(_USAGE, sa.Column("kb_per_recipient", sa.Integer(), nullable=False,
                                    server_default="0"))
    # models.usage_kb_per_recipient, in SQL (// is integer division: DIV on MariaDB/MySQL).
    usage = sa.table(_USAGE, sa.column("server_id", sa.Integer()), sa.column("period"),
                     sa.column("messages", sa.BigInteger()),
                     sa.column("recipients", sa.BigInteger()),
                     sa.column("bytes", sa.BigInteger()),
                     sa.column("kb_per_recipient", sa.Integer()), sa.column("updated_at"))
    per = usage.c.bytes // (usage.c.recipients * 1024)
    op.execute(usage.update().values(kb_per_recipient=sa.case(
        (usage.c.recipients <= 0, sa.case((usage.c.bytes > 0, _KB_CAP), else_=0)),
        (usage.c.bytes <= 0, 0),
        (per > _KB_CAP, _KB_CAP),
        else_=per,
    )))
    op.create_index("ix_lm_billing_usage_period_server", _USAGE, ["period", "server_id"],
                    unique=False)
    op.create_index("ix_lm_billing_usage_kb_period", _USAGE, ["kb_per_recipient", "period"],
                    unique=False)
    op.create_table(
        _TABLE,
        sa.Column("server_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("lists", sa.Integer(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("recipients", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.ForeignKeyConstraint(["server_id"], ["lm_billing_server.id"],
                                name=op.f(f"fk_{_TABLE}_server_id_lm_billing_server")),
        sa.PrimaryKeyConstraint("server_id", "period", name=op.f(f"pk_{_TABLE}")),
        **_OPTIONS,
    )
    op.create_index("ix_lm_billing_usage_rollup_period", _TABLE, ["period"], unique=False)
    # The roll-ups of every (server, month) there is usage for: one INSERT ... SELECT
    # (engine.rollup.rebuild_rollups does the same).
    rollup = sa.table(_TABLE, sa.column("server_id"), sa.column("period"),
                      sa.column("lists"), sa.column("messages"), sa.column("recipients"),
                      sa.column("bytes"), sa.column("updated_at"))
    select = (
        sa.select(usage.c.server_id, usage.c.period, sa.func.count(),
                  sa.func.coalesce(sa.func.sum(usage.c.messages), 0),
                  sa.func.coalesce(sa.func.sum(usage.c.recipients), 0),
                  sa.func.coalesce(sa.func.sum(usage.c.bytes), 0),
                  sa.func.max(usage.c.updated_at))
        .group_by(usage.c.server_id, usage.c.period)
    )
    op.execute(rollup.insert().from_select(
        ["server_id", "period", "lists", "messages", "recipients", "bytes", "updated_at"],
        select))


def downgrade() -> None:
    op.drop_index("ix_lm_billing_usage_rollup_period", table_name=_TABLE)
    op.drop_table(_TABLE)
    with op.batch_alter_table(_USAGE, schema=None) as batch_op:
        batch_op.drop_index("ix_lm_billing_usage_kb_period")
        batch_op.drop_index("ix_lm_billing_usage_period_server")
        batch_op.drop_column("kb_per_recipient")
