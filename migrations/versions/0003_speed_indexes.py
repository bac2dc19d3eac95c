"""Speed (issue 15): index the problems by server and status, and by the run that first found
them, so a validate's problem queries read one server's rows, not every server's.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 10:00:00.000000

Self-contained on purpose, like 0001: no import of the plugin's models.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lm_billing_problem", schema=None) as batch_op:
        batch_op.create_index("ix_lm_billing_problem_server_status", ["server_id", "status"],
                              unique=False)
        batch_op.create_index("ix_lm_billing_problem_first_run", ["first_run_id"], unique=False)


# Foreign keys whose own index MariaDB/MySQL dropped once ours could serve them (it refuses to
# drop ours while the key needs it): (constraint, column).
_FOREIGN_KEYS = (
    ("fk_lm_billing_problem_first_run_id_lm_billing_run", "first_run_id", "lm_billing_run"),
    ("fk_lm_billing_problem_server_id_lm_billing_server", "server_id", "lm_billing_server"),
)


def downgrade() -> None:
    mysql = op.get_bind().dialect.name in ("mysql", "mariadb")
    if mysql:
        for name, _column, _table in _FOREIGN_KEYS:
            op.drop_constraint(name, "lm_billing_problem", type_="foreignkey")
    with op.batch_alter_table("lm_billing_problem", schema=None) as batch_op:
        batch_op.drop_index("ix_lm_billing_problem_first_run")
        batch_op.drop_index("ix_lm_billing_problem_server_status")
    if mysql:
        for name, column, table in _FOREIGN_KEYS:
            op.create_foreign_key(name, "lm_billing_problem", table, [column], ["id"])
