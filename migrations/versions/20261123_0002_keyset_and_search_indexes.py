"""Keyset pagination indexes; GIN indexes for tags and title search on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 11:13:08.536062+00:00

Each (sort key, id) index serves one ListTasks/StreamTasks order and its
row-value seek `(key, id) > (:key, :id)`; (project_id, create_time, id) serves
the most common query, one project's tasks newest first, and also the
project foreign key (replacing the plain project_id index).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYSET_INDEXES = {
    "ix_tasks_project_id_create_time_id": ["project_id", "create_time", "id"],
    "ix_tasks_create_time_id": ["create_time", "id"],
    "ix_tasks_update_time_id": ["update_time", "id"],
    "ix_tasks_priority_id": ["priority", "id"],
    "ix_tasks_title_id": ["title", "id"],
}


def _is_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    """Add the keyset indexes (and, on PostgreSQL, the GIN search indexes)."""
    op.drop_index("ix_tasks_project_id", table_name="tasks")
    for name, columns in KEYSET_INDEXES.items():
        op.create_index(name, "tasks", columns)
    if _is_postgresql():
        # pg_trgm is a trusted extension: the database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.create_index(
            "ix_tasks_tags_gin",
            "tasks",
            ["tags"],
            postgresql_using="gin",
            postgresql_ops={"tags": "jsonb_path_ops"},
        )
        op.create_index(
            "ix_tasks_title_trgm",
            "tasks",
            ["title"],
            postgresql_using="gin",
            postgresql_ops={"title": "gin_trgm_ops"},
        )


def downgrade() -> None:
    """Back to the plain foreign-key index (the pg_trgm extension stays)."""
    if _is_postgresql():
        op.drop_index("ix_tasks_title_trgm", table_name="tasks")
        op.drop_index("ix_tasks_tags_gin", table_name="tasks")
    for name in reversed(KEYSET_INDEXES):
        op.drop_index(name, table_name="tasks")
    op.create_index("ix_tasks_project_id", "tasks", ["project_id"])
