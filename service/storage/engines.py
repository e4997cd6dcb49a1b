"""Engines: one pool per database server, configured for direct or pooled connections."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.settings import Settings
from service.storage.statement_log import log_statements

_RETURNED_AT = "taskservice_returned_at"
# Connection execution option: this transaction only reads.
READ_ONLY = "taskservice_read_only"
# PostgreSQL: how pooled connections rest, and what a unit of work that writes asks for.
_RESTING_ISOLATION = "AUTOCOMMIT"
_WRITE_ISOLATION = "READ COMMITTED"
# read_only_sql_transaction: a write reached a hot standby, or a primary demoted to one.
_READ_ONLY_SERVER = "25006"


def create_engine(
    settings: Settings,
    *,
    url: str | None = None,
    foreign_keys: bool = True,
) -> AsyncEngine:
    """Create an engine for `url` (default: the configured primary database_url).

    `foreign_keys=False` is for migrations on SQLite, whose batch mode rebuilds
    tables and must not trip over references while a table is briefly gone.
    """
    url = url or settings.database_url
    if url.startswith("sqlite"):
        engine = _create_sqlite_engine(settings, url, foreign_keys)
    else:
        # Connections rest in AUTOCOMMIT, the mode of every read (see
        # database._read_only_options), so the hottest RPCs switch nothing at checkout
        # and reset nothing at checkin; whatever writes asks for a transaction (write_options).
        engine = create_async_engine(
            url,
            isolation_level=_RESTING_ISOLATION,
            pool_pre_ping=settings.pool_pre_ping,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout,
            pool_recycle=_recycle_seconds(settings),
            connect_args=driver_options(settings, url),
        )
        _drop_connections_to_read_only_servers(engine)
    if settings.sql_log:
        log_statements(engine)
    if settings.pool_ping_after_idle > 0 and not settings.pool_pre_ping:
        ping_idle_connections(engine, settings.pool_ping_after_idle)
    return engine


def _recycle_seconds(settings: Settings) -> float:
    """SQLAlchemy's pool_recycle: replace connections this old at checkout; -1 = never."""
    return settings.pool_recycle if settings.pool_recycle > 0 else -1


def create_probe_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    """A one-connection engine for health and replication checks, apart from the RPCs' pool."""
    url = url or settings.database_url
    if url.startswith("sqlite"):
        return create_async_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=False)
    return create_async_engine(
        url,
        isolation_level=_RESTING_ISOLATION,
        pool_size=1,
        max_overflow=0,
        pool_pre_ping=False,
        connect_args=driver_options(settings, url),
    )


def driver_options(settings: Settings, url: str) -> dict[str, Any]:
    """asyncpg connect arguments for `url`: none when direct; no named statements when
    `url` leads to a transaction-pooling PgBouncer.

    Behind transaction pooling each transaction, and each statement outside one, may
    run on another server connection, so a statement prepared under a name on one is
    missing (or another client's) on the next. asyncpg's statement_cache_size=0 makes
    every statement unnamed and re-parsed in the same round trip as its Bind and
    Execute (asyncpg marks them "unprepared" for PgBouncer's sake). SQLAlchemy's own
    cache of prepared statements stays on: it then keeps only those unnamed
    statements' descriptions and codecs, so a cached statement costs one round trip,
    where turning both caches off costs two (a Parse/Describe before each execution).
    """
    if settings.database_pooler != "transaction" or not _is_pooled(settings, url):
        return {}
    return {"statement_cache_size": 0}


def _is_pooled(settings: Settings, url: str) -> bool:
    # The session URL is direct by definition, unless it defaulted to database_url.
    return url != settings.session_database_url or settings.session_url_is_pooled


def _drop_connections_to_read_only_servers(engine: AsyncEngine) -> None:
    """Treat a read-only server as a lost connection: invalidate it (and the pool).

    After a failover the old primary may come back as a standby; the pool's
    connections to it would fail every write with SQLSTATE 25006 forever. Marking the
    error a disconnect makes SQLAlchemy replace them, and with a multi-host URL
    (target_session_attrs=read-write) the new connections find the new primary.
    """

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        original = context.original_exception
        if getattr(original, "sqlstate", None) == _READ_ONLY_SERVER or (
            getattr(getattr(original, "__cause__", None), "sqlstate", None) == _READ_ONLY_SERVER
        ):
            context.is_disconnect = True


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


def _create_sqlite_engine(settings: Settings, url: str, foreign_keys: bool) -> AsyncEngine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        pool_pre_ping=settings.pool_pre_ping,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=_recycle_seconds(settings),
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


def write_options(dialect_name: str) -> dict[str, Any]:
    """Connection execution options for work that writes: a READ COMMITTED transaction.

    PostgreSQL connections of create_engine rest in AUTOCOMMIT, where BEGIN is a no-op;
    SQLAlchemy applies this at checkout and restores AUTOCOMMIT at checkin. SQLite's
    engine sends its own BEGIN IMMEDIATE.
    """
    return {"isolation_level": _WRITE_ISOLATION} if dialect_name == "postgresql" else {}
