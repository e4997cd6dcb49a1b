"""SQLite: ids of deleted projects, workers and tasks are never handed out again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 06:00:00.000000+00:00

Without AUTOINCREMENT, SQLite gives a new row max(id) + 1, so deleting the newest
project (or worker, or purging the newest tasks) lets the next one take its id, and
with it the deleted row's audit history (List*Events reads history by id). The tables
are rebuilt with AUTOINCREMENT (batch mode copies rows, indexes and foreign keys);
sqlite_sequence starts at the largest id present. PostgreSQL sequences never reuse
ids: nothing to do there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("projects", "workers", "tasks")


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    """Rebuild the tables with AUTOINCREMENT (SQLite only)."""
    _rebuild(autoincrement=True)


def downgrade() -> None:
    """Rebuild them without (SQLite only)."""
    _rebuild(autoincrement=False)
