"""Engine, the one session factory, and UnitOfWork: the one session scope per RPC."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from service.storage.audit_snapshots import Snapshot
from service.storage.engines import (
    READ_ONLY,
    create_engine,
    create_probe_engine,
    ping_idle_connections,
    write_options,
)
from service.storage.repositories.audit import AuditRepository, AuditValues, event_values
from service.storage.repositories.base import RELEASE_AFTER_STATEMENT
from service.storage.repositories.feed import FeedRepository
from service.storage.repositories.idempotency import IdempotencyRepository
from service.storage.repositories.projects import ProjectRepository
from service.storage.repositories.tasks import TaskRepository
from service.storage.repositories.workers import WorkerRepository

# Engines moved to engines.py; these names stay importable from here.
__all__ = [
    "DEADLINE",
    "READ_ONLY",
    "SessionFactory",
    "UnitOfWork",
    "create_engine",
    "create_probe_engine",
    "make_session_factory",
    "ping_idle_connections",
    "statement_timeout_ms",
    "write_options",
]

# session.info key: the time.monotonic() by which the caller stops waiting.
DEADLINE = "deadline"
_MAX_STATEMENT_TIMEOUT_MS = 2**31 - 1  # PostgreSQL's limit for statement_timeout
# One bound parameter (not a literal per value), so asyncpg prepares it once per connection.
# is_local = true: SET LOCAL, so the timeout ends with the transaction; no session state
# (a transaction-pooling PgBouncer hands the server connection to others afterwards).
_SET_STATEMENT_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")


class SessionFactory(async_sessionmaker[AsyncSession]):
    """The one session factory; objects stay readable after commit. It also knows the
    connection options its database needs for reading and for writing (worked out once)."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(
            engine,
            class_=AsyncSession,
            sync_session_class=DeadlineSession,
            expire_on_commit=False,
        )
        self.read_only_options = _read_only_options(engine.dialect.name)
        self.write_options = write_options(engine.dialect.name)
        # Called after every commit of a unit of work (the change feed's in-process
        # wake-up on SQLite, whose writers cannot NOTIFY).
        self.commit_listeners: list[Callable[[], None]] = []


def make_session_factory(engine: AsyncEngine) -> SessionFactory:
    """The one session factory of `engine`."""
    return SessionFactory(engine)


class DeadlineSession(Session):
    """The sync session inside each AsyncSession; its transactions end by the RPC deadline."""


@event.listens_for(DeadlineSession, "after_begin")
def _limit_to_deadline(session: Session, _transaction: Any, connection: Connection) -> None:
    """Make PostgreSQL cancel any statement still running when the caller stops waiting.

    SET LOCAL semantics (is_local = true): the timeout ends with the transaction, so a
    pooled connection never carries it into another RPC. SQLite has no equivalent.
    Reads run outside a transaction; gRPC cancels their handler at the deadline, and
    a statement cancelled mid-flight costs its connection (SQLAlchemy invalidates it),
    which ends the query in PostgreSQL too.
    """
    deadline = session.info.get(DEADLINE)
    if deadline is None or connection.dialect.name != "postgresql":
        return
    connection.execute(_SET_STATEMENT_TIMEOUT, {"ms": str(statement_timeout_ms(deadline))})


def statement_timeout_ms(deadline: float) -> int:
    """Milliseconds left until `deadline` (time.monotonic()), at least 1 (0 means none)."""
    remaining = math.ceil((deadline - time.monotonic()) * 1000)
    return min(max(remaining, 1), _MAX_STATEMENT_TIMEOUT_MS)


def _read_only_options(dialect_name: str) -> dict[str, Any]:
    """Execution options of a read-only unit of work: no transaction around its reads.

    Under READ COMMITTED every statement takes its own snapshot anyway, so a read-only
    transaction adds nothing but BEGIN and ROLLBACK: two of a GetTask's three round trips.
    PostgreSQL connections already rest in AUTOCOMMIT; SQLite's begin listener skips BEGIN.
    """
    return {} if dialect_name == "postgresql" else {READ_ONLY: True}


class UnitOfWork:
    """One session and transaction for one RPC: commit explicitly, else roll back.

    With a `deadline` (time.monotonic()), every transaction it begins on PostgreSQL gets
    a statement_timeout of the time left, so abandoned queries do not outlive the call.
    `read_only` units of work never commit and run their reads outside a transaction;
    their Core statements hold a connection only while they run (ORM loads, such as the
    FULL view, keep theirs until the unit of work ends). `after_success` runs once the
    unit of work ended without an error (e.g. to report the write's WAL position).
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        actor: str = "anonymous",
        *,
        deadline: float | None = None,
        read_only: bool = False,
        after_success: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._session_factory = session_factory
        self.actor = actor
        self.deadline = deadline
        self.read_only = read_only
        self._after_success = after_success

    async def __aenter__(self) -> UnitOfWork:
        factory = self._session_factory
        if self.read_only:
            # No transaction, so no SET LOCAL timeout to scope (see _limit_to_deadline).
            info: dict[str, Any] = {RELEASE_AFTER_STATEMENT: True}
            options = factory.read_only_options
        else:
            info = {} if self.deadline is None else {DEADLINE: self.deadline}
            options = factory.write_options
        self.session = factory(info=info, execution_options=options)
        self.tasks = TaskRepository(self.session)
        self.projects = ProjectRepository(self.session)
        self.workers = WorkerRepository(self.session)
        self.audit = AuditRepository(self.session)
        self.idempotency = IdempotencyRepository(self.session)
        self.feed = FeedRepository(self.session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # close() rolls back whatever was not committed and returns the connection.
        # Not shielded (a task per RPC, measured at ~15% of a GetTask's CPU): a cancel
        # landing mid-close makes SQLAlchemy invalidate the connection instead, which
        # also ends its transaction (tests/test_unit_of_work.py). Outside a transaction
        # (committed, or read-only statements that each returned their connection) the
        # session holds no connection: skip the greenlet hop of an empty close (~10% of
        # a GetTask's CPU, measured in-process). Its objects stay readable, as after a commit.
        if self.session.in_transaction():
            await self.session.close()
        if exc is None and self._after_success is not None:
            await self._after_success()

    def record(
        self,
        entity_type: str,
        entity_id: int | None,
        action: str,
        before: Snapshot | None,
        after: Snapshot | None,
    ) -> None:
        """Audit a mutation by this unit of work's actor (committed with it, or never)."""
        self.audit.record(self.actor, entity_type, entity_id, action, before, after)

    def audit_event(
        self, entity_type: str, action: str, before: Snapshot | None, after: Snapshot | None
    ) -> AuditValues:
        """An audit event by this unit of work's actor, for a repository that writes it
        in the same statement as the row it is about (see TaskRepository.create)."""
        return event_values(self.actor, entity_type, action, before, after)

    async def commit(self) -> None:
        """Commit everything the repositories did in this unit of work, audit included."""
        if self.read_only:
            raise RuntimeError("a read-only unit of work cannot commit")
        await self.audit.write_pending()
        await self.session.commit()
        for listener in self._session_factory.commit_listeners:
            listener()
