"""Engine, the one session factory, and UnitOfWork: the one session scope per RPC."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import event, exc, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from service.settings import Settings
from service.storage.audit_snapshots import Snapshot
from service.storage.repositories.audit import AuditRepository, AuditValues, event_values
from service.storage.repositories.base import RELEASE_AFTER_STATEMENT
from service.storage.repositories.feed import FeedRepository
from service.storage.repositories.idempotency import IdempotencyRepository
from service.storage.repositories.projects import ProjectRepository
from service.storage.repositories.tasks import TaskRepository
from service.storage.repositories.workers import WorkerRepository

_RETURNED_AT = "taskservice_returned_at"

# session.info key: the time.monotonic() by which the caller stops waiting.
DEADLINE = "deadline"
# Connection execution option: this transaction only reads.
READ_ONLY = "taskservice_read_only"
# PostgreSQL: how pooled connections rest, and what a unit of work that writes asks for.
_RESTING_ISOLATION = "AUTOCOMMIT"
_WRITE_ISOLATION = "READ COMMITTED"
_MAX_STATEMENT_TIMEOUT_MS = 2**31 - 1  # PostgreSQL's limit for statement_timeout
# One bound parameter (not a literal per value), so asyncpg prepares it once per connection.
_SET_STATEMENT_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")


def create_engine(settings: Settings, *, foreign_keys: bool = True) -> AsyncEngine:
    """Create the process's engine for the configured database.

    `foreign_keys=False` is for migrations on SQLite, whose batch mode rebuilds
    tables and must not trip over references while a table is briefly gone.
    """
    if settings.is_sqlite:
        engine = _create_sqlite_engine(settings, foreign_keys)
    else:
        # Connections rest in AUTOCOMMIT, the mode of every read (see
        # _read_only_options), so the hottest RPCs switch nothing at checkout and
        # reset nothing at checkin; whatever writes asks for a transaction (write_options).
        engine = create_async_engine(
            settings.database_url,
            isolation_level=_RESTING_ISOLATION,
            pool_pre_ping=settings.pool_pre_ping,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout,
        )
    if settings.pool_ping_after_idle > 0 and not settings.pool_pre_ping:
        ping_idle_connections(engine, settings.pool_ping_after_idle)
    return engine


def ping_idle_connections(engine: AsyncEngine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout only if it sat idle `idle_seconds`.

    Per-checkout pre-ping costs a round trip per RPC (`;` on our connections resting
    in AUTOCOMMIT; BEGIN, ping, ROLLBACK on asyncpg otherwise). Busy connections are
    used again within moments; a connection that dies while busy fails its statement,
    SQLAlchemy invalidates the pool, the RPC gets UNAVAILABLE (retryable) and the next
    checkouts reconnect. Idle connections are the ones a database restart or an idle
    timeout silently kills: ping those.
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at < idle_seconds:
            return
        try:
            alive = sync_engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # noqa: BLE001 - any failure means "use another"
            raise exc.DisconnectionError("idle connection failed its ping") from error
        if not alive:
            raise exc.DisconnectionError("idle connection failed its ping")


def create_probe_engine(settings: Settings) -> AsyncEngine:
    """A one-connection engine for health probes, apart from the RPCs' pool."""
    return create_async_engine(
        settings.database_url, pool_size=1, max_overflow=0, pool_pre_ping=False
    )


def _create_sqlite_engine(settings: Settings, foreign_keys: bool) -> AsyncEngine:
    database = make_url(settings.database_url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        settings.database_url,
        pool_pre_ping=settings.pool_pre_ping,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        connect_args={"timeout": 30},
    )
    _use_immediate_transactions(engine, foreign_keys)
    return engine


def _use_immediate_transactions(engine: AsyncEngine, foreign_keys: bool) -> None:
    """Make SQLite enforce foreign keys and take the write lock at BEGIN for writers.

    Deferred SQLite transactions that read and then write fail with
    "database is locked" under concurrency instead of waiting; BEGIN IMMEDIATE
    makes concurrent writers queue on busy_timeout instead (SQLAlchemy's pysqlite
    recipe, which applies to aiosqlite too). Read-only units of work send no BEGIN:
    in WAL mode their statements then never wait for, nor block, a writer.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching to WAL needs a lock another connection may hold.
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()
        # SQLite's lower()/LIKE fold ASCII only; title_contains needs Unicode case folding.
        dbapi_connection.create_function("casefold", 1, _casefold, deterministic=True)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Reads run without BEGIN: each statement is its own implicit transaction.
        if not connection.get_execution_options().get(READ_ONLY, False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def _casefold(value: str | None) -> str | None:
    return None if value is None else value.casefold()


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


def write_options(dialect_name: str) -> dict[str, Any]:
    """Connection execution options for work that writes: a READ COMMITTED transaction.

    PostgreSQL connections of create_engine rest in AUTOCOMMIT, where BEGIN is a no-op;
    SQLAlchemy applies this at checkout and restores AUTOCOMMIT at checkin. SQLite's
    engine sends its own BEGIN IMMEDIATE.
    """
    return {"isolation_level": _WRITE_ISOLATION} if dialect_name == "postgresql" else {}


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
    FULL view, keep theirs until the unit of work ends).
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        actor: str = "anonymous",
        *,
        deadline: float | None = None,
        read_only: bool = False,
    ) -> None:
        self._session_factory = session_factory
        self.actor = actor
        self.deadline = deadline
        self.read_only = read_only

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
