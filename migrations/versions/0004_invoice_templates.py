"""Invoice templates (lm_billing_template, chosen per customer), and unique name keys for
customers (Company), hosting plans and billing groups (within their customer).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000

Self-contained on purpose, like 0001: no import of the plugin's models.

Duplicates already stored (two customers "Acme Publishing", two groups of one customer of the
same name) are kept as they are, names untouched: the lowest id gets the plain key, every
later one the key "<key> #<id>" (a real key never holds a space, so it can clash with none).
Each such row is logged at WARNING on "lm_billing_plugin.migrate". Nothing breaks: the rows
stay editable as long as their name keeps its key; new duplicates are refused from now on,
and renaming one of the old ones to a distinct name gives it a plain key.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}
log = logging.getLogger("lm_billing_plugin.migrate")


def _key_type() -> sa.types.TypeEngine[str]:
    variant = mysql.VARCHAR(200, charset="utf8mb4", collation="utf8mb4_nopad_bin")
    return sa.String(200).with_variant(variant, "mysql", "mariadb")


def _utc() -> sa.types.TypeEngine[Any]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _key(name: str) -> str:
    # models.name_key, copied: a migration must not change when the models do.
    return "".join(name.split()).casefold()


def _backfill(table: str, name_col: str, key_col: str, scope: str | None) -> None:
    """Fill key_col from name_col; later duplicates (within scope) get "<key> #<id>"."""
    conn = op.get_bind()
    cols = [sa.column("id", sa.Integer()), sa.column(name_col), sa.column(key_col)]
    if scope:
        cols.append(sa.column(scope, sa.Integer()))
    t = sa.table(table, *cols)
    rows = conn.execute(sa.select(t).order_by(t.c.id)).all()
    seen: set[tuple[Any, str]] = set()
    updates = []
    for row in rows:
        key = _key(getattr(row, name_col))
        where = getattr(row, scope) if scope else None
        if (where, key) in seen:
            log.warning(
                "%s %s: name %r is a duplicate (ignoring case and spaces); kept with key "
                "%r: rename it to tell them apart",
                table, row.id, getattr(row, name_col), f"{key} #{row.id}",
            )
            key = f"{key} #{row.id}"
        seen.add((where, key))
        updates.append({"row_id": row.id, "k": key})
    if updates:
        conn.execute(
            t.update().where(t.c.id == sa.bindparam("row_id")).values({key_col: sa.bindparam("k")}),
            updates,
        )


def upgrade() -> None:
    op.create_table(
        "lm_billing_template",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("name_key", _key_type(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.CheckConstraint("kind IN ('email', 'web')", name=op.f("ck_lm_billing_template_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_template")),
        sa.UniqueConstraint("kind", "name_key", name=op.f("uq_lm_billing_template_kind_name_key")),
        **_OPTIONS,
    )
    for table, key_col in (
        ("lm_billing_customer", "company_key"),
        ("lm_billing_plan", "name_key"),
        ("lm_billing_group", "name_key"),
    ):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column(key_col, _key_type(), nullable=True))
    _backfill("lm_billing_customer", "company", "company_key", None)
    _backfill("lm_billing_plan", "name", "name_key", None)
    _backfill("lm_billing_group", "name", "name_key", "customer_id")
    with op.batch_alter_table("lm_billing_customer") as batch_op:
        batch_op.alter_column("company_key", existing_type=_key_type(), nullable=False)
        batch_op.create_unique_constraint(
            op.f("uq_lm_billing_customer_company_key"), ["company_key"]
        )
        batch_op.add_column(sa.Column("email_template_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("web_template_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_lm_billing_customer_email_template_id_lm_billing_template"),
            "lm_billing_template", ["email_template_id"], ["id"],
        )
        batch_op.create_foreign_key(
            op.f("fk_lm_billing_customer_web_template_id_lm_billing_template"),
            "lm_billing_template", ["web_template_id"], ["id"],
        )
    with op.batch_alter_table("lm_billing_plan") as batch_op:
        batch_op.alter_column("name_key", existing_type=_key_type(), nullable=False)
        batch_op.create_unique_constraint(op.f("uq_lm_billing_plan_name_key"), ["name_key"])
    with op.batch_alter_table("lm_billing_group") as batch_op:
        batch_op.alter_column("name_key", existing_type=_key_type(), nullable=False)
        batch_op.create_unique_constraint(
            op.f("uq_lm_billing_group_customer_id_name_key"), ["customer_id", "name_key"]
        )
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        # 0002 gave the charge key MariaDB's default (accent-insensitive) collation.
        op.alter_column(
            "lm_billing_charge", "name_key", type_=_key_type(),
            existing_type=sa.String(200), existing_nullable=False,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.alter_column(
            "lm_billing_charge", "name_key", type_=sa.String(200),
            existing_type=_key_type(), existing_nullable=False,
        )
    with op.batch_alter_table("lm_billing_group") as batch_op:
        batch_op.drop_constraint(op.f("uq_lm_billing_group_customer_id_name_key"), type_="unique")
        batch_op.drop_column("name_key")
    with op.batch_alter_table("lm_billing_plan") as batch_op:
        batch_op.drop_constraint(op.f("uq_lm_billing_plan_name_key"), type_="unique")
        batch_op.drop_column("name_key")
    with op.batch_alter_table("lm_billing_customer") as batch_op:
        batch_op.drop_constraint(
            op.f("fk_lm_billing_customer_web_template_id_lm_billing_template"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            op.f("fk_lm_billing_customer_email_template_id_lm_billing_template"),
            type_="foreignkey",
        )
        batch_op.drop_column("web_template_id")
        batch_op.drop_column("email_template_id")
        batch_op.drop_constraint(op.f("uq_lm_billing_customer_company_key"), type_="unique")
        batch_op.drop_column("company_key")
    op.drop_table("lm_billing_template")
