"""Member deletion runs, the plan of each invoice line, usage sort indexes (issue 12): "Delete
Them" as a stored background run (lm_billing_delete_run) with one row per membership and its outcome
(lm_billing_delete_run_item); lm_billing_invoice_line.plan_name, the hosting plan a line was
billed under, filled for the lines there are from the plan term that covered the invoice's
period (the latest one to start, when the plan changed inside it); lm_billing_usage indexed
by (period, messages | recipients | bytes, list_id) for the per-list report of one month.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-20 10:00:00.000000

Self-contained on purpose, like 0001: no import of the plugin's models.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}
_RUN = "lm_billing_delete_run"
_ITEM = "lm_billing_delete_run_item"
_LINE = "lm_billing_invoice_line"
_SORTED = ("messages", "recipients", "bytes")


def _utc() -> sa.types.TypeEngine[Any]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _name(length: int = 255) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_nopad_bin"), "mysql", "mariadb"
    )


def upgrade() -> None:
    op.create_table(
        _RUN,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("servers", sa.Integer(), nullable=False),
        sa.Column("deleted", sa.Integer(), nullable=False),
        sa.Column("not_found", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{_RUN}")),
        **_OPTIONS,
    )
    op.create_table(
        _ITEM,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delete_run_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("server_name", _name(100), nullable=False),
        sa.Column("list_name", _name(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.ForeignKeyConstraint(["delete_run_id"], [f"{_RUN}.id"],
                                name=op.f(f"fk_{_ITEM}_delete_run_id_{_RUN}")),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{_ITEM}")),
        **_OPTIONS,
    )
    op.create_index("ix_lm_billing_delete_run_item_run", _ITEM, ["delete_run_id", "position"],
                    unique=False)

    # Usage per list for one month, sorted by one of these: a page reads the index's first
    # rows instead of sorting the month (reports.usage).
    for column in _SORTED:
        op.create_index(f"ix_lm_billing_usage_period_{column}", "lm_billing_usage",
                        ["period", column, "list_id"], unique=False)

    with op.batch_alter_table(_LINE) as batch:
        batch.add_column(sa.Column("plan_name", sa.String(length=200), nullable=False,
                                   server_default=""))
    line = sa.table(_LINE, sa.column("invoice_id", sa.Integer()),
                    sa.column("group_name", sa.String()), sa.column("plan_name", sa.String()))
    invoice = sa.table("lm_billing_invoice", sa.column("id", sa.Integer()),
                       sa.column("customer_id", sa.Integer()),
                       sa.column("period_start", sa.Date()), sa.column("period_end", sa.Date()))
    group = sa.table("lm_billing_group", sa.column("id", sa.Integer()),
                     sa.column("customer_id", sa.Integer()), sa.column("name", sa.String()))
    term = sa.table("lm_billing_group_plan", sa.column("group_id", sa.Integer()),
                    sa.column("plan_id", sa.Integer()), sa.column("start_date", sa.Date()),
                    sa.column("end_date", sa.Date()))
    plan = sa.table("lm_billing_plan", sa.column("id", sa.Integer()),
                    sa.column("name", sa.String()))
    # The plan term of the line's group that overlapped the invoice's period, latest start
    # first: one correlated scalar subquery, set-based on every backend.
    covering = (
        sa.select(plan.c.name)
        .select_from(invoice)
        .join(group, sa.and_(group.c.customer_id == invoice.c.customer_id,
                             group.c.name == line.c.group_name))
        .join(term, term.c.group_id == group.c.id)
        .join(plan, plan.c.id == term.c.plan_id)
        .where(invoice.c.id == line.c.invoice_id, term.c.start_date <= invoice.c.period_end,
               sa.or_(term.c.end_date.is_(None), term.c.end_date >= invoice.c.period_start))
        .order_by(term.c.start_date.desc())
        .limit(1)
        .correlate(line)
        .scalar_subquery()
    )
    op.execute(line.update().where(line.c.group_name != "")
               .values(plan_name=sa.func.coalesce(covering, "")))


def downgrade() -> None:
    with op.batch_alter_table(_LINE) as batch:
        batch.drop_column("plan_name")
    for column in _SORTED:
        op.drop_index(f"ix_lm_billing_usage_period_{column}", table_name="lm_billing_usage")
    # The index goes with its table (MariaDB refuses to drop it first: the foreign key uses it).
    op.drop_table(_ITEM)
    op.drop_table(_RUN)
