"""Lookups: trigram GIN indexes for ListProjects/ListWorkers name_contains (PostgreSQL).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 05:30:00.000000+00:00

`name ILIKE '%text%'` is served by them as title_contains is by ix_tasks_title_trgm;
ListWorkers' exact e-mail lookup already has the unique index on workers.email.
SQLite gets nothing: it searches by a scan (casefold() LIKE), as for task titles.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("projects", "workers")


def _is_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    """Add the indexes (pg_trgm was created by 0002)."""
    if not _is_postgresql():
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for table in TABLES:
        op.create_index(
            f"ix_{table}_name_trgm",
            table,
            ["name"],
            postgresql_using="gin",
            postgresql_ops={"name": "gin_trgm_ops"},
        )


def downgrade() -> None:
    """Drop them again."""
    if not _is_postgresql():
        return
    for table in reversed(TABLES):
        op.drop_index(f"ix_{table}_name_trgm", table_name=table)
