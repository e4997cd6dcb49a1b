"""Task creator: tasks.creator_id, a worker reference, indexed for the filter and DeleteWorker.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 04:30:00.000000+00:00

Existing tasks get no creator (NULL: not recorded).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Add the column, its foreign key and its index (batch mode: SQLite rebuilds tasks)."""
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("creator_id", ID, nullable=True))
        batch.create_foreign_key(
            op.f("fk_tasks_creator_id_workers"),
            "workers",
            ["creator_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_index(op.f("ix_tasks_creator_id"), "tasks", ["creator_id"])


def downgrade() -> None:
    """Drop them again."""
    op.drop_index(op.f("ix_tasks_creator_id"), table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint(op.f("fk_tasks_creator_id_workers"), type_="foreignkey")
        batch.drop_column("creator_id")
