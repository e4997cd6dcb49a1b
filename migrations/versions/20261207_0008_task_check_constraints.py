"""CHECK constraints on tasks.status and tasks.priority.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 04:30:00.000000+00:00

Readers map every stored status and priority to the API's enums; a row written by
hand with another value would make each read that meets it fail. The database now
refuses such rows. The lists are the models' enums as of this revision (a migration
is frozen in time: it does not import them). An existing row that breaks them makes
the upgrade fail, on purpose: fix the row, then upgrade.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS = {
    "ck_tasks_status": "status IN ('PENDING', 'IN_PROGRESS', 'BLOCKED', 'DONE', 'CANCELLED')",
    "ck_tasks_priority": "priority IN (1, 2, 3, 4)",
}


# SQLite rebuilds the table in batch mode: keep 0007's AUTOINCREMENT (ids never reused).
TABLE_KWARGS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    """Add the constraints (batch mode: SQLite rebuilds the table, PostgreSQL alters it)."""
    with op.batch_alter_table("tasks", table_kwargs=TABLE_KWARGS) as batch:
        for name, condition in CHECKS.items():
            batch.create_check_constraint(op.f(name), condition)


def downgrade() -> None:
    """Drop them."""
    with op.batch_alter_table("tasks", table_kwargs=TABLE_KWARGS) as batch:
        for name in CHECKS:
            batch.drop_constraint(op.f(name), type_="check")
