"""Billing cycle: additional charges and their assignments, each group's plan history (seeded
from lm_billing_group.plan_id), invoices with lines, usage, numbers and sends, bill runs; and
Assignment.is_free, Customer start/end dates, additional emails and type.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 22:27:36.251202

Self-contained on purpose, like 0001: no import of the plugin's models.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}


def _name(length: int) -> sa.types.TypeEngine[str]:
    variant = mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_nopad_bin")
    return sa.String(length).with_variant(variant, "mysql", "mariadb")


def _utc() -> sa.types.TypeEngine[Any]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}"))


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}")
    )


def _index(table: str, column: str) -> None:
    op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def upgrade() -> None:
    op.create_table(
        "lm_billing_bill_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("invoiced", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("already_billed", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        _pk("lm_billing_bill_run"),
        **_OPTIONS,
    )
    op.create_index(
        "ix_lm_billing_bill_run_period", "lm_billing_bill_run", ["period_start", "period_end"]
    )
    op.create_table(
        "lm_billing_charge",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("name_key", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("default_amount", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("is_recurring", sa.Boolean(), nullable=False),
        sa.Column("is_proratable", sa.Boolean(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        _pk("lm_billing_charge"),
        sa.UniqueConstraint("name_key", name=op.f("uq_lm_billing_charge_name_key")),
        **_OPTIONS,
    )
    op.create_table(
        "lm_billing_invoice_seq",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("year", name=op.f("pk_lm_billing_invoice_seq")),
        **_OPTIONS,
    )
    op.create_table(
        "lm_billing_invoice",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=40), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("active_key", sa.String(length=60), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("carried_over", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("carried_from_id", sa.Integer(), nullable=True),
        sa.Column("company", sa.String(length=200), nullable=False),
        sa.Column("contact_name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("additional_emails", sa.Text(), nullable=False),
        sa.Column("void_reason", sa.Text(), nullable=True),
        sa.Column("voided_by", sa.String(length=200), nullable=True),
        sa.Column("voided_at", _utc(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        # At most one non-void invoice per (customer, Start, End): active_key is set while
        # the invoice is not void, NULL once void, and unique (NULLs never collide).
        sa.CheckConstraint(
            "(status = 'void') = (active_key IS NULL)",
            name=op.f("ck_lm_billing_invoice_active_key"),
        ),
        sa.CheckConstraint(
            "status IN ('issued', 'sent', 'test-sent', 'void')",
            name=op.f("ck_lm_billing_invoice_status"),
        ),
        _fk("lm_billing_invoice", "carried_from_id", "lm_billing_invoice"),
        _fk("lm_billing_invoice", "customer_id", "lm_billing_customer"),
        _fk("lm_billing_invoice", "run_id", "lm_billing_bill_run"),
        _pk("lm_billing_invoice"),
        sa.UniqueConstraint("active_key", name=op.f("uq_lm_billing_invoice_active_key")),
        sa.UniqueConstraint("number", name=op.f("uq_lm_billing_invoice_number")),
        sa.UniqueConstraint("year", "seq", name=op.f("uq_lm_billing_invoice_year_seq")),
        **_OPTIONS,
    )
    _index("lm_billing_invoice", "customer_id")
    op.create_index(
        "ix_lm_billing_invoice_period", "lm_billing_invoice", ["period_start", "period_end"]
    )
    op.create_table(
        "lm_billing_bill_run_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("skip_code", sa.String(length=40), nullable=True),
        sa.Column("skip_reason", sa.Text(), nullable=True),
        _fk("lm_billing_bill_run_item", "customer_id", "lm_billing_customer"),
        _fk("lm_billing_bill_run_item", "invoice_id", "lm_billing_invoice"),
        _fk("lm_billing_bill_run_item", "run_id", "lm_billing_bill_run"),
        _pk("lm_billing_bill_run_item"),
        sa.UniqueConstraint(
            "run_id", "customer_id", name=op.f("uq_lm_billing_bill_run_item_run_id_customer_id")
        ),
        **_OPTIONS,
    )
    op.create_table(
        "lm_billing_group_charge",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("charge_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=12, scale=2), nullable=True),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        _fk("lm_billing_group_charge", "charge_id", "lm_billing_charge"),
        _fk("lm_billing_group_charge", "group_id", "lm_billing_group"),
        _fk("lm_billing_group_charge", "invoice_id", "lm_billing_invoice"),
        _pk("lm_billing_group_charge"),
        **_OPTIONS,
    )
    _index("lm_billing_group_charge", "charge_id")
    _index("lm_billing_group_charge", "group_id")
    op.create_table(
        "lm_billing_group_plan",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        _fk("lm_billing_group_plan", "group_id", "lm_billing_group"),
        _fk("lm_billing_group_plan", "plan_id", "lm_billing_plan"),
        _pk("lm_billing_group_plan"),
        **_OPTIONS,
    )
    _index("lm_billing_group_plan", "group_id")
    _index("lm_billing_group_plan", "plan_id")
    op.create_table(
        "lm_billing_invoice_line",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("group_name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=14, scale=3), nullable=False),
        sa.Column("unit_price", sa.Numeric(precision=14, scale=4), nullable=False),
        sa.Column("amount", sa.Numeric(precision=12, scale=2), nullable=False),
        _fk("lm_billing_invoice_line", "invoice_id", "lm_billing_invoice"),
        _pk("lm_billing_invoice_line"),
        sa.UniqueConstraint(
            "invoice_id", "position", name=op.f("uq_lm_billing_invoice_line_invoice_id_position")
        ),
        **_OPTIONS,
    )
    op.create_table(
        "lm_billing_invoice_send",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("to_addresses", sa.Text(), nullable=False),
        sa.Column("is_test", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("server_answer", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        _fk("lm_billing_invoice_send", "invoice_id", "lm_billing_invoice"),
        _pk("lm_billing_invoice_send"),
        **_OPTIONS,
    )
    _index("lm_billing_invoice_send", "invoice_id")
    op.create_table(
        "lm_billing_invoice_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("group_name", sa.String(length=200), nullable=False),
        sa.Column("server_name", _name(100), nullable=False),
        sa.Column("site_name", _name(255), nullable=False),
        sa.Column("list_name", _name(255), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("recipients", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.Numeric(precision=18, scale=3), nullable=False),
        _fk("lm_billing_invoice_usage", "invoice_id", "lm_billing_invoice"),
        _pk("lm_billing_invoice_usage"),
        **_OPTIONS,
    )
    _index("lm_billing_invoice_usage", "invoice_id")

    # New columns on existing tables: server defaults fill the rows already there.
    with op.batch_alter_table("lm_billing_assignment") as batch_op:
        batch_op.add_column(
            sa.Column("is_free", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("lm_billing_customer") as batch_op:
        batch_op.add_column(sa.Column("start_date", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("end_date", sa.Date(), nullable=True))
        batch_op.add_column(
            sa.Column("additional_emails", sa.Text(), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("customer_type", sa.String(length=50), server_default="", nullable=False)
        )

    _seed_plan_history()


def _seed_plan_history() -> None:
    """Each group's single plan becomes the first row of its plan history. A plan without a
    start date starts on the day the group was created."""
    group = sa.table(
        "lm_billing_group",
        sa.column("id", sa.Integer()),
        sa.column("plan_id", sa.Integer()),
        sa.column("plan_start", sa.Date()),
        sa.column("plan_end", sa.Date()),
        sa.column("created_at", sa.DateTime()),
    )
    history = sa.table(
        "lm_billing_group_plan",
        sa.column("group_id", sa.Integer()),
        sa.column("plan_id", sa.Integer()),
        sa.column("start_date", sa.Date()),
        sa.column("end_date", sa.Date()),
        sa.column("created_at", sa.DateTime()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(group).where(group.c.plan_id.is_not(None)).order_by(group.c.id)
    ).all()
    if rows:
        conn.execute(
            history.insert(),
            [
                {
                    "group_id": row.id,
                    "plan_id": row.plan_id,
                    "start_date": row.plan_start or row.created_at.date(),
                    "end_date": row.plan_end,
                    "created_at": row.created_at,
                }
                for row in rows
            ],
        )


def downgrade() -> None:
    # lm_billing_group keeps plan_id / plan_start / plan_end, so the history just goes.
    with op.batch_alter_table("lm_billing_customer") as batch_op:
        batch_op.drop_column("customer_type")
        batch_op.drop_column("additional_emails")
        batch_op.drop_column("end_date")
        batch_op.drop_column("start_date")
    with op.batch_alter_table("lm_billing_assignment") as batch_op:
        batch_op.drop_column("is_free")
    # Dropping a table drops its indexes and constraints; children go before parents.
    op.drop_table("lm_billing_invoice_usage")
    op.drop_table("lm_billing_invoice_send")
    op.drop_table("lm_billing_invoice_line")
    op.drop_table("lm_billing_group_plan")
    op.drop_table("lm_billing_group_charge")
    op.drop_table("lm_billing_bill_run_item")
    op.drop_table("lm_billing_invoice")
    op.drop_table("lm_billing_invoice_seq")
    op.drop_table("lm_billing_charge")
    op.drop_table("lm_billing_bill_run")
