"""Due dates: tasks.due_time and the two indexes of order_by due_time (nulls last).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 05:00:00.000000+00:00

(due_time, id) serves the tasks that have a due time, in either direction, and the
due_time/overdue filters; the partial index on id WHERE due_time IS NULL serves the
tasks without one, which come last: each page is two index range scans at most.
Existing tasks get no due time.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNDATED = sa.text("due_time IS NULL")


def upgrade() -> None:
    """Add the column and its indexes."""
    op.add_column("tasks", sa.Column("due_time", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_tasks_due_time_id", "tasks", ["due_time", "id"])
    op.create_index(
        "ix_tasks_id_without_due_time",
        "tasks",
        ["id"],
        postgresql_where=UNDATED,
        sqlite_where=UNDATED,
    )


def downgrade() -> None:
    """Drop them again (batch mode: SQLite rebuilds the table to drop the column)."""
    op.drop_index("ix_tasks_id_without_due_time", table_name="tasks")
    op.drop_index("ix_tasks_due_time_id", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("due_time")
