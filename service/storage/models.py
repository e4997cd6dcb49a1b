"""SQLModel tables and their enums; knows nothing of gRPC or generated code."""

# No `from __future__ import annotations`: SQLModel resolves relationship
# annotations at class creation and cannot read postponed (string) ones.
import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Relationship, SQLModel

# Named constraints make migrations reproducible and let errors name the rule broken.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT ids on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
IdType = BigInteger().with_variant(Integer(), "sqlite")
# SQLite reuses the largest id after its row is deleted unless the table says
# AUTOINCREMENT; ids of deleted projects, workers and purged tasks must stay theirs,
# or a new row would inherit their audit history. (PostgreSQL sequences never reuse.)
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}
# One column type for tags: JSONB (GIN-indexable, @>) on PostgreSQL, JSON elsewhere.
TagsType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, also on SQLite, which stores naive text."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        # asyncpg already decodes timestamptz as UTC-aware datetimes: skip a Python
        # call per value on the hot read paths (three per task row).
        if dialect.driver == "asyncpg":
            return None
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class TaskStatus(enum.StrEnum):
    """Lifecycle state of a task (stored as its name)."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    BLOCKED = "BLOCKED"
    DONE = "DONE"
    CANCELLED = "CANCELLED"


class TaskPriority(enum.IntEnum):
    """Urgency of a task; stored as a number so ORDER BY priority is meaningful."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    URGENT = 4


def _one_of(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(values)})"


# Readers map each stored status and priority to the API's enums, so the database
# refuses any other value (migration 0008 made these; change both together).
STATUS_CHECK = _one_of("status", [f"'{status.value}'" for status in TaskStatus])
PRIORITY_CHECK = _one_of("priority", [str(priority.value) for priority in TaskPriority])


def _time_column() -> Any:
    return Field(sa_type=UTCDateTime(), nullable=False)


def _version_column() -> Column[int]:
    # SQLAlchemy's version counter: every UPDATE sets version = version + 1
    # WHERE version = <loaded>, so a lost race raises StaleDataError (ABORTED).
    return Column("version", Integer, nullable=False, server_default="1")


_PROJECT_VERSION = _version_column()
_WORKER_VERSION = _version_column()
_TASK_VERSION = _version_column()


def _name_search_index(table: str) -> Index:
    """PostgreSQL only (env.py skips it elsewhere): `name ILIKE '%text%'` (name_contains)."""
    return Index(
        f"ix_{table}_name_trgm",
        "name",
        postgresql_using="gin",
        postgresql_ops={"name": "gin_trgm_ops"},
        info={"dialects": ("postgresql",)},
    )


class Project(SQLModel, table=True):
    """A named collection of tasks."""

    __tablename__ = "projects"
    __table_args__ = (_name_search_index("projects"), NEVER_REUSE_IDS)

    id: int | None = Field(default=None, sa_type=IdType, primary_key=True)
    name: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    create_time: datetime = _time_column()
    update_time: datetime = _time_column()
    version: int = Field(default=1, sa_column=_PROJECT_VERSION)

    __mapper_args__ = {"version_id_col": _PROJECT_VERSION}


class Worker(SQLModel, table=True):
    """Someone tasks can be assigned to."""

    __tablename__ = "workers"
    __table_args__ = (_name_search_index("workers"), NEVER_REUSE_IDS)

    id: int | None = Field(default=None, sa_type=IdType, primary_key=True)
    name: str = Field(sa_column=Column(String(200), nullable=False))
    email: str = Field(sa_column=Column(String(254), nullable=False, unique=True))
    create_time: datetime = _time_column()
    update_time: datetime = _time_column()
    version: int = Field(default=1, sa_column=_WORKER_VERSION)

    __mapper_args__ = {"version_id_col": _WORKER_VERSION}


class Task(SQLModel, table=True):
    """A unit of work in a project; tasks form trees through parent_task_id."""

    __tablename__ = "tasks"
    # Keyset pagination needs (sort key, id) indexes; see README "Indexes".
    __table_args__ = (
        Index("ix_tasks_project_id_create_time_id", "project_id", "create_time", "id"),
        Index("ix_tasks_create_time_id", "create_time", "id"),
        Index("ix_tasks_update_time_id", "update_time", "id"),
        Index("ix_tasks_priority_id", "priority", "id"),
        Index("ix_tasks_title_id", "title", "id"),
        # order_by due_time: the tasks with a due time by (due_time, id), then those
        # without one by id, from a partial index (see keyset.py: nulls last).
        Index("ix_tasks_due_time_id", "due_time", "id"),
        Index(
            "ix_tasks_id_without_due_time",
            "id",
            postgresql_where=text("due_time IS NULL"),
            sqlite_where=text("due_time IS NULL"),
        ),
        # PostgreSQL only (env.py skips them elsewhere): tags @> and title ILIKE.
        Index(
            "ix_tasks_tags_gin",
            "tags",
            postgresql_using="gin",
            postgresql_ops={"tags": "jsonb_path_ops"},
            info={"dialects": ("postgresql",)},
        ),
        Index(
            "ix_tasks_title_trgm",
            "title",
            postgresql_using="gin",
            postgresql_ops={"title": "gin_trgm_ops"},
            info={"dialects": ("postgresql",)},
        ),
        CheckConstraint(STATUS_CHECK, name="status"),
        CheckConstraint(PRIORITY_CHECK, name="priority"),
        NEVER_REUSE_IDS,
    )

    id: int | None = Field(default=None, sa_type=IdType, primary_key=True)
    project_id: int = Field(
        sa_column=Column(IdType, ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    )
    title: str = Field(sa_column=Column(String(500), nullable=False))
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    status: TaskStatus = Field(
        default=TaskStatus.PENDING, sa_column=Column(String(16), nullable=False)
    )
    priority: TaskPriority = Field(
        default=TaskPriority.MEDIUM, sa_column=Column(Integer, nullable=False)
    )
    tags: list[str] = Field(
        default_factory=list, sa_column=Column(TagsType, nullable=False, server_default="[]")
    )
    assignee_id: int | None = Field(
        default=None,
        sa_column=Column(IdType, ForeignKey("workers.id", ondelete="SET NULL"), index=True),
    )
    parent_task_id: int | None = Field(
        default=None,
        sa_column=Column(IdType, ForeignKey("tasks.id", ondelete="RESTRICT"), index=True),
    )
    create_time: datetime = _time_column()
    update_time: datetime = _time_column()
    version: int = Field(default=1, sa_column=_TASK_VERSION)
    # Soft delete (AIP-164): when, and by the delete of which task (itself or an
    # ancestor deleted with force), so an undelete restores exactly that subtree.
    delete_time: datetime | None = Field(default=None, sa_type=UTCDateTime(), nullable=True)
    deleted_with_id: int | None = Field(default=None, sa_type=IdType, nullable=True, index=True)
    # Who created the task (immutable); SET NULL only backs up DeleteWorker, which
    # clears it through the ORM so the task's etag moves and the change is audited.
    creator_id: int | None = Field(
        default=None,
        sa_column=Column(IdType, ForeignKey("workers.id", ondelete="SET NULL"), index=True),
    )
    due_time: datetime | None = Field(default=None, sa_type=UTCDateTime(), nullable=True)

    __mapper_args__ = {"version_id_col": _TASK_VERSION}

    # lazy="raise": an unplanned lazy load is a bug (MissingGreenlet under asyncio);
    # repositories load what a view needs eagerly.
    assignee: Worker | None = Relationship(
        sa_relationship_kwargs={"lazy": "raise", "foreign_keys": "[Task.assignee_id]"}
    )
    creator: Worker | None = Relationship(
        sa_relationship_kwargs={"lazy": "raise", "foreign_keys": "[Task.creator_id]"}
    )
    project: Project = Relationship(sa_relationship_kwargs={"lazy": "raise"})
    parent: Optional["Task"] = Relationship(  # noqa: UP045 - a forward ref can't use `|`
        back_populates="subtasks",
        sa_relationship_kwargs={"lazy": "raise", "remote_side": "Task.id"},
    )
    subtasks: list["Task"] = Relationship(
        back_populates="parent",
        sa_relationship_kwargs={"lazy": "raise", "order_by": "Task.id"},
    )


@dataclass(slots=True)
class NewTask:
    """A task about to be inserted, as plain column values (every column of Task).

    CreateTask writes it with one Core INSERT and never puts it in a session, so it
    needs no ORM entity, whose construction (SQLModel and SQLAlchemy bookkeeping on
    every attribute) cost ~9% of a create's server CPU under the perf bench's load.
    """

    project_id: int
    title: str
    description: str
    status: TaskStatus
    priority: TaskPriority
    tags: list[str]
    assignee_id: int | None
    parent_task_id: int | None
    create_time: datetime
    update_time: datetime
    id: int | None = None  # set once inserted
    version: int = 1
    delete_time: datetime | None = None
    deleted_with_id: int | None = None
    creator_id: int | None = None
    due_time: datetime | None = None


# A stored task or one about to be inserted: what snapshots, BASIC messages and the
# reference checks read (the columns both have).
AnyTask = Task | NewTask


class IdempotencyKey(SQLModel, table=True):
    """A create request's request_id (AIP-155) and the response it produced."""

    __tablename__ = "idempotency_keys"

    request_id: str = Field(sa_column=Column(String(36), primary_key=True))
    method: str = Field(sa_column=Column(String(64), nullable=False))
    payload_hash: str = Field(sa_column=Column(String(64), nullable=False))
    response: bytes = Field(default=b"", sa_column=Column(LargeBinary, nullable=False))
    create_time: datetime = Field(sa_type=UTCDateTime(), nullable=False, index=True)


# Audit changes: {"field": {"old": ..., "new": ...}}, JSONB on PostgreSQL.
ChangesType = JSON().with_variant(JSONB(), "postgresql")
# A task event's state; None is SQL NULL (not JSON null), so "no state" is testable.
StateType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class AuditEvent(SQLModel, table=True):
    """One committed mutation; the change feed reads the task events in commit order."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_entity", "entity_type", "entity_id", "id"),
        # PostgreSQL: the change feed joins a commit's events by transaction id.
        Index("ix_audit_events_xid", "xid", info={"dialects": ("postgresql",)}),
    )

    id: int | None = Field(default=None, sa_type=IdType, primary_key=True)
    entity_type: str = Field(sa_column=Column(String(16), nullable=False))
    entity_id: int = Field(sa_column=Column(IdType, nullable=False))
    action: str = Field(sa_column=Column(String(16), nullable=False))
    actor: str = Field(sa_column=Column(String(200), nullable=False))
    event_time: datetime = _time_column()
    changes: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(ChangesType, nullable=False)
    )
    # The change feed. xid: the writing transaction's id; PostgreSQL fills it with a
    # column default that only the migration declares (pg_current_xact_id()), and
    # FeedCommit says when that transaction committed. SQLite leaves it NULL (its
    # single writer commits in id order). state: a task event's task right after the
    # change (every column but id, as JSON values); NULL for other entities and once
    # the feed's retention has passed.
    xid: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, nullable=True, info={"default_set_by_migration": True}),
    )
    state: dict[str, Any] | None = Field(default=None, sa_column=Column(StateType, nullable=True))


class FeedCommit(SQLModel, table=True):
    """PostgreSQL: a committed transaction with task events, numbered in commit order.

    Written by a deferred trigger on audit_events at COMMIT, under a transaction-scoped
    advisory lock, so `seq` follows commit order (see service/storage/change_feed.py).
    """

    __tablename__ = "feed_commits"
    __table_args__ = {"info": {"dialects": ("postgresql",)}}

    seq: int | None = Field(default=None, sa_type=BigInteger, primary_key=True)
    xid: int = Field(sa_column=Column(BigInteger, nullable=False, unique=True))
    commit_time: datetime = _time_column()


class FeedHorizon(SQLModel, table=True):
    """One row: feed positions up to `seq` are past retention (purged)."""

    __tablename__ = "feed_horizon"

    id: int = Field(default=1, sa_column=Column(Integer, primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
