"""Change feed: task states on audit events, commit order on PostgreSQL, the retention horizon.

PostgreSQL: every audit row records its transaction id (a column default), and a
deferred trigger numbers each transaction with task events at COMMIT, under an advisory
lock, in `feed_commits`, then NOTIFYs the listeners (why: service/storage/change_feed.py).
SQLite has one writer at a time, so audit ids already follow commit order.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIME = sa.DateTime(timezone=True)
# The NOTIFY channel and the advisory lock's name; service/storage/change_feed.py
# listens on the same channel.
CHANNEL = "taskservice_feed"
LOCK_NAME = "taskservice.feed"

# Runs once per transaction with task events (the trigger fires per row, deferred to
# COMMIT, after every other statement and row lock of the transaction): takes the feed
# lock, which it holds until the commit is visible, so seq numbers follow commit order.
FEED_COMMIT_FUNCTION = f"""
CREATE FUNCTION taskservice_feed_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  this_xact text := pg_current_xact_id()::text;
BEGIN
  IF current_setting('taskservice.feed_xact', true) IS DISTINCT FROM this_xact THEN
    PERFORM set_config('taskservice.feed_xact', this_xact, true);
    PERFORM pg_advisory_xact_lock(hashtextextended('{LOCK_NAME}', 0));
    INSERT INTO feed_commits (xid, commit_time) VALUES (this_xact::bigint, clock_timestamp());
    PERFORM pg_notify('{CHANNEL}', '');
  END IF;
  RETURN NULL;
END
$$
"""
FEED_COMMIT_TRIGGER = """
CREATE CONSTRAINT TRIGGER audit_events_feed_commit AFTER INSERT ON audit_events
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.entity_type = 'task')
EXECUTE FUNCTION taskservice_feed_commit()
"""


def upgrade() -> None:
    """Add the columns, tables, index and (PostgreSQL) the commit trigger."""
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("xid", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("state", JSON, nullable=True))
    op.create_table(
        "feed_horizon",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feed_horizon")),
    )
    if not postgres:
        # Events written before this revision carry no task state: behind the horizon.
        op.execute(
            "INSERT INTO feed_horizon (id, seq) SELECT 1, coalesce(max(id), 0) FROM audit_events"
        )
        return
    op.execute("INSERT INTO feed_horizon (id, seq) VALUES (1, 0)")
    op.execute(
        "ALTER TABLE audit_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id()::text::bigint"
    )
    op.create_index("ix_audit_events_xid", "audit_events", ["xid"])
    op.create_table(
        "feed_commits",
        sa.Column("seq", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("xid", sa.BigInteger(), nullable=False),
        sa.Column("commit_time", TIME, nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_feed_commits")),
        sa.UniqueConstraint("xid", name=op.f("uq_feed_commits_xid")),
    )
    op.execute(FEED_COMMIT_FUNCTION)
    op.execute(FEED_COMMIT_TRIGGER)


def downgrade() -> None:
    """Drop them again (batch mode: SQLite rebuilds the table)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_feed_commit ON audit_events")
        op.execute("DROP FUNCTION taskservice_feed_commit()")
        op.drop_table("feed_commits")
        op.drop_index("ix_audit_events_xid", table_name="audit_events")
    op.drop_table("feed_horizon")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("state")
        batch.drop_column("xid")
