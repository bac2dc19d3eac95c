"""Initial schema: hosting servers, sites, lists, usage, customers, plans, billing groups,
assignments, batches, runs, problems, background tasks and the audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 09:56:23.038120

Self-contained on purpose: a revision must not import the plugin's models, which will
have changed by the time an old revision runs on an old database.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# utf8mb4 so that any Unicode name (emoji included) fits on MariaDB; ignored elsewhere.
_OPTIONS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}


def _name(length: int) -> sa.types.TypeEngine[str]:
    # Server, site and list names compare exactly: MariaDB's default collations ignore
    # case and trailing spaces, so names use the binary NO PAD collation there.
    variant = mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_nopad_bin")
    return sa.String(length).with_variant(variant, "mysql", "mariadb")


def _utc() -> sa.types.TypeEngine[Any]:
    # Naive UTC timestamps (the models hand them back aware); MariaDB keeps microseconds
    # only with DATETIME(6).
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "lm_billing_batch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("triggered_by", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_batch")),
        **_OPTIONS,
    )
    op.create_table(
        "lm_billing_customer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("company", sa.String(length=200), nullable=False),
        sa.Column("contact_name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("payment_method", sa.String(length=100), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_customer")),
        **_OPTIONS,
    )
    op.create_table(
        "lm_billing_plan",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("max_members", sa.Integer(), nullable=False),
        sa.Column("max_members_per_list", sa.Integer(), nullable=False),
        sa.Column("max_lists", sa.Integer(), nullable=False),
        sa.Column("max_lists_per_site", sa.Integer(), nullable=False),
        sa.Column("max_sites", sa.Integer(), nullable=False),
        sa.Column("bill_by_list", sa.Boolean(), nullable=False),
        sa.Column("billing_method", sa.String(length=20), nullable=False),
        sa.Column("monthly_price", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("overage_cpm", sa.Numeric(precision=12, scale=4), nullable=False),
        sa.Column("included_messages", sa.BigInteger(), nullable=False),
        sa.Column("max_message_size_kb", sa.Integer(), nullable=False),
        sa.Column("monthly_price_per_server", sa.Numeric(precision=12, scale=2), nullable=False),
        sa.Column("cost_per_gb", sa.Numeric(precision=12, scale=4), nullable=False),
        sa.Column("included_gb", sa.Numeric(precision=12, scale=3), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_plan")),
        sa.UniqueConstraint("name", name=op.f("uq_lm_billing_plan_name")),
        **_OPTIONS,
    )
    op.create_table(
        "lm_billing_server",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _name(100), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), server_default="2021", nullable=False),
        sa.Column("comments", sa.Text(), nullable=False),
        sa.Column("password_encrypted", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=True),
        sa.Column("hostname_reported", sa.String(length=255), nullable=True),
        sa.Column("validated_at", _utc(), nullable=True),
        sa.Column("synced_at", _utc(), nullable=True),
        sa.Column("checked_at", _utc(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("logging_mode", sa.String(length=40), nullable=True),
        sa.Column("logging_label", sa.String(length=255), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", _utc(), nullable=True),
        sa.Column("lease_run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_server")),
        sa.UniqueConstraint("name", name=op.f("uq_lm_billing_server_name")),
        **_OPTIONS,
    )
    op.create_table(
        "lm_billing_task",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("next_run_at", _utc(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", _utc(), nullable=True),
        sa.Column("current_run_id", sa.Integer(), nullable=True),
        sa.Column("last_run_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_lm_billing_task")),
        **_OPTIONS,
    )
    op.create_table(
        "lm_billing_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=50), nullable=False),
        sa.Column("object_type", sa.String(length=20), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=True),
        sa.Column("server_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["lm_billing_server.id"],
            name=op.f("fk_lm_billing_audit_server_id_lm_billing_server"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_audit")),
        **_OPTIONS,
    )
    op.create_index("ix_lm_billing_audit_at", "lm_billing_audit", ["at"], unique=False)

    op.create_table(
        "lm_billing_group",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=True),
        sa.Column("plan_start", sa.Date(), nullable=True),
        sa.Column("plan_end", sa.Date(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["lm_billing_customer.id"],
            name=op.f("fk_lm_billing_group_customer_id_lm_billing_customer"),
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["lm_billing_plan.id"],
            name=op.f("fk_lm_billing_group_plan_id_lm_billing_plan"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_group")),
        **_OPTIONS,
    )
    op.create_index(
        op.f("ix_lm_billing_group_customer_id"), "lm_billing_group", ["customer_id"], unique=False
    )

    op.create_table(
        "lm_billing_list",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("name", _name(255), nullable=False),
        sa.Column("site_name", _name(255), nullable=False),
        sa.Column("descr", sa.Text(), nullable=False),
        sa.Column("created", sa.Date(), nullable=True),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("admin", sa.String(length=320), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("first_seen_at", _utc(), nullable=False),
        sa.Column("last_seen_at", _utc(), nullable=False),
        sa.Column("removed_at", _utc(), nullable=True),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["lm_billing_server.id"],
            name=op.f("fk_lm_billing_list_server_id_lm_billing_server"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_list")),
        sa.UniqueConstraint("server_id", "name", name=op.f("uq_lm_billing_list_server_id_name")),
        **_OPTIONS,
    )
    op.create_index(
        op.f("ix_lm_billing_list_server_id"), "lm_billing_list", ["server_id"], unique=False
    )

    op.create_table(
        "lm_billing_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("triggered_by", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("error_code", sa.String(length=40), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("lists_seen", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("problems_open", sa.Integer(), nullable=False),
        sa.Column("problems_new", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["lm_billing_batch.id"],
            name=op.f("fk_lm_billing_run_batch_id_lm_billing_batch"),
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["lm_billing_server.id"],
            name=op.f("fk_lm_billing_run_server_id_lm_billing_server"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_run")),
        **_OPTIONS,
    )
    op.create_index(
        op.f("ix_lm_billing_run_batch_id"), "lm_billing_run", ["batch_id"], unique=False
    )
    op.create_index(
        "ix_lm_billing_run_server_started",
        "lm_billing_run",
        ["server_id", "started_at"],
        unique=False,
    )

    op.create_table(
        "lm_billing_site",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("name", _name(255), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("first_seen_at", _utc(), nullable=False),
        sa.Column("last_seen_at", _utc(), nullable=False),
        sa.Column("removed_at", _utc(), nullable=True),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["lm_billing_server.id"],
            name=op.f("fk_lm_billing_site_server_id_lm_billing_server"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_site")),
        sa.UniqueConstraint("server_id", "name", name=op.f("uq_lm_billing_site_server_id_name")),
        **_OPTIONS,
    )
    op.create_index(
        op.f("ix_lm_billing_site_server_id"), "lm_billing_site", ["server_id"], unique=False
    )

    op.create_table(
        "lm_billing_task_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=50), nullable=False),
        sa.Column("scheduled_for", _utc(), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["lm_billing_batch.id"],
            name=op.f("fk_lm_billing_task_run_batch_id_lm_billing_batch"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_task_run")),
        **_OPTIONS,
    )
    op.create_index(
        "ix_lm_billing_task_run_task_started",
        "lm_billing_task_run",
        ["task", "started_at"],
        unique=False,
    )

    op.create_table(
        "lm_billing_assignment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("object_type", sa.String(length=10), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("list_id", sa.Integer(), nullable=True),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.CheckConstraint(
            "(object_type = 'server' AND site_id IS NULL AND list_id IS NULL) OR (object_type = 'site' AND site_id IS NOT NULL AND list_id IS NULL) OR (object_type = 'list' AND list_id IS NOT NULL AND site_id IS NULL)",
            name=op.f("ck_lm_billing_assignment_object"),
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["lm_billing_group.id"],
            name=op.f("fk_lm_billing_assignment_group_id_lm_billing_group"),
        ),
        sa.ForeignKeyConstraint(
            ["list_id"],
            ["lm_billing_list.id"],
            name=op.f("fk_lm_billing_assignment_list_id_lm_billing_list"),
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["lm_billing_server.id"],
            name=op.f("fk_lm_billing_assignment_server_id_lm_billing_server"),
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["lm_billing_site.id"],
            name=op.f("fk_lm_billing_assignment_site_id_lm_billing_site"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_assignment")),
        **_OPTIONS,
    )
    op.create_index(
        op.f("ix_lm_billing_assignment_group_id"),
        "lm_billing_assignment",
        ["group_id"],
        unique=False,
    )
    op.create_index(
        "ix_lm_billing_assignment_server_end",
        "lm_billing_assignment",
        ["server_id", "end_date"],
        unique=False,
    )

    op.create_table(
        "lm_billing_problem",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("object_type", sa.String(length=10), nullable=False),
        sa.Column("object_name", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("first_seen_at", _utc(), nullable=False),
        sa.Column("last_seen_at", _utc(), nullable=False),
        sa.Column("closed_at", _utc(), nullable=True),
        sa.Column("first_run_id", sa.Integer(), nullable=True),
        sa.Column("last_run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["first_run_id"],
            ["lm_billing_run.id"],
            name=op.f("fk_lm_billing_problem_first_run_id_lm_billing_run"),
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["lm_billing_group.id"],
            name=op.f("fk_lm_billing_problem_group_id_lm_billing_group"),
        ),
        sa.ForeignKeyConstraint(
            ["last_run_id"],
            ["lm_billing_run.id"],
            name=op.f("fk_lm_billing_problem_last_run_id_lm_billing_run"),
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["lm_billing_server.id"],
            name=op.f("fk_lm_billing_problem_server_id_lm_billing_server"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_problem")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_lm_billing_problem_fingerprint")),
        **_OPTIONS,
    )
    op.create_index(
        "ix_lm_billing_problem_status_server",
        "lm_billing_problem",
        ["status", "server_id"],
        unique=False,
    )

    op.create_table(
        "lm_billing_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("recipients", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.ForeignKeyConstraint(
            ["list_id"],
            ["lm_billing_list.id"],
            name=op.f("fk_lm_billing_usage_list_id_lm_billing_list"),
        ),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["lm_billing_server.id"],
            name=op.f("fk_lm_billing_usage_server_id_lm_billing_server"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lm_billing_usage")),
        sa.UniqueConstraint("list_id", "period", name=op.f("uq_lm_billing_usage_list_id_period")),
        **_OPTIONS,
    )
    op.create_index(
        op.f("ix_lm_billing_usage_server_id"), "lm_billing_usage", ["server_id"], unique=False
    )


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints; children go before parents.
    op.drop_table("lm_billing_usage")
    op.drop_table("lm_billing_problem")
    op.drop_table("lm_billing_assignment")
    op.drop_table("lm_billing_task_run")
    op.drop_table("lm_billing_site")
    op.drop_table("lm_billing_run")
    op.drop_table("lm_billing_list")
    op.drop_table("lm_billing_group")
    op.drop_table("lm_billing_audit")
    op.drop_table("lm_billing_task")
    op.drop_table("lm_billing_server")
    op.drop_table("lm_billing_plan")
    op.drop_table("lm_billing_customer")
    op.drop_table("lm_billing_batch")
