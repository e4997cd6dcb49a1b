"""Safe writes: version counters (etags), soft delete, idempotency keys, audit trail.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 11:25:24.003140+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIME = sa.DateTime(timezone=True)


def _version() -> sa.Column[int]:
    return sa.Column("version", sa.Integer(), server_default="1", nullable=False)


def upgrade() -> None:
    """Add the tables and columns."""
    op.create_table(
        "audit_events",
        sa.Column("id", ID, nullable=False),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", ID, nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("event_time", TIME, nullable=False),
        sa.Column("changes", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_entity", "audit_events", ["entity_type", "entity_id", "id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", TIME, nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(op.f("ix_idempotency_keys_create_time"), "idempotency_keys", ["create_time"])
    op.add_column("projects", _version())
    op.add_column("workers", _version())
    op.add_column("tasks", _version())
    op.add_column("tasks", sa.Column("delete_time", TIME, nullable=True))
    op.add_column("tasks", sa.Column("deleted_with_id", ID, nullable=True))
    op.create_index(op.f("ix_tasks_deleted_with_id"), "tasks", ["deleted_with_id"])


def downgrade() -> None:
    """Drop them again (batch mode: SQLite rebuilds the tables)."""
    op.drop_index(op.f("ix_tasks_deleted_with_id"), table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("deleted_with_id")
        batch.drop_column("delete_time")
        batch.drop_column("version")
    for table in ("workers", "projects"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("version")
    op.drop_index(op.f("ix_idempotency_keys_create_time"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_audit_events_entity", table_name="audit_events")
    op.drop_table("audit_events")
