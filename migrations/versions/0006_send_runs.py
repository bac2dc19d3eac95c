"""Sending bills (issue 11 §4): a send run (who asked, From / Bounce / Test addresses, the
Message Comments, progress) and its invoices, each with its status and reason; each mail
attempt stays in lm_billing_invoice_send (0002).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-16 10:00:00.000000

Self-contained on purpose, like 0001: no import of the plugin's models.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}
_RUN = "lm_billing_send_run"
_ITEM = "lm_billing_send_run_item"


def _utc() -> sa.types.TypeEngine[Any]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"],
                                   name=op.f(f"fk_{table}_{column}_{target}"))


def upgrade() -> None:
    op.create_table(
        _RUN,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("is_test", sa.Boolean(), nullable=False),
        sa.Column("resend", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("from_name", sa.String(length=200), nullable=False),
        sa.Column("from_email", sa.String(length=320), nullable=False),
        sa.Column("bounce_email", sa.String(length=320), nullable=False),
        sa.Column("test_email", sa.String(length=320), nullable=False),
        sa.Column("comments_text", sa.Text(), nullable=False),
        sa.Column("comments_html", sa.Text(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("with_pdf", sa.Boolean(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{_RUN}")),
        **_OPTIONS,
    )
    op.create_table(
        _ITEM,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("send_run_id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("send_id", sa.Integer(), nullable=True),
        _fk(_ITEM, "send_run_id", _RUN),
        _fk(_ITEM, "invoice_id", "lm_billing_invoice"),
        _fk(_ITEM, "send_id", "lm_billing_invoice_send"),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{_ITEM}")),
        sa.UniqueConstraint("send_run_id", "invoice_id",
                            name=op.f(f"uq_{_ITEM}_send_run_id_invoice_id")),
        **_OPTIONS,
    )
    op.create_index(op.f(f"ix_{_ITEM}_invoice_id"), _ITEM, ["invoice_id"], unique=False)


def downgrade() -> None:
    op.drop_table(_ITEM)
    op.drop_table(_RUN)
