"""Speed (issue 15): the last run that judged each server's problems, so a validate writes one
row per server instead of moving "last seen" on every problem it found again; and the digests
that let an unchanged server skip the comparison.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09 10:00:00.000000

Self-contained on purpose, like 0001: no import of the plugin's models.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}
_TABLE = "lm_billing_problem_run"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("server_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("seen_at",
                  sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
                  nullable=False),
        sa.Column("inventory_digest", sa.String(length=64), nullable=True),
        sa.Column("result_digest", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["lm_billing_run.id"],
                                name=op.f(f"fk_{_TABLE}_run_id_lm_billing_run")),
        sa.ForeignKeyConstraint(["server_id"], ["lm_billing_server.id"],
                                name=op.f(f"fk_{_TABLE}_server_id_lm_billing_server")),
        sa.PrimaryKeyConstraint("server_id", name=op.f(f"pk_{_TABLE}")),
        **_OPTIONS,
    )
    # Each open problem's last sighting until now is its own row's (nothing to copy).


def downgrade() -> None:
    # The problems' own "last seen" columns get the last sighting back before the table goes.
    pointer = sa.table(_TABLE, sa.column("server_id"), sa.column("run_id"),
                       sa.column("seen_at"))
    problem = sa.table("lm_billing_problem", sa.column("server_id"), sa.column("status"),
                       sa.column("last_seen_at"), sa.column("last_run_id"))
    later = sa.and_(problem.c.status == "open", sa.exists(
        sa.select(pointer.c.server_id).where(pointer.c.server_id == problem.c.server_id,
                                             pointer.c.seen_at > problem.c.last_seen_at)))

    def of_server(column: Any) -> Any:
        return (sa.select(column).where(pointer.c.server_id == problem.c.server_id)
                .scalar_subquery())

    op.execute(problem.update().where(later).values(
        last_run_id=of_server(pointer.c.run_id), last_seen_at=of_server(pointer.c.seen_at)))
    op.drop_table(_TABLE)
