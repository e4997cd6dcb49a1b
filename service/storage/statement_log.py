"""The SQL statement log (setting `sql_log`): every statement sent, with its duration.

SQLAlchemy's own `echo` writes through a logger it configures itself and cannot be
routed by `log_level`; this log goes through the process's logging set-up instead
(text or JSON, request ids included) as logger `service.storage.sql` at INFO.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("service.storage.sql")

_STARTED = "taskservice_statement_started"
_PARAMETERS_MAX = 500  # characters of a statement's parameters shown (executemany can be huge)
_BLANKS = re.compile(r"\s+")


def log_statements(engine: AsyncEngine) -> None:
    """Log every statement `engine` sends from now on, with its duration."""
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(
        conn: Any, _cursor: Any, _statement: str, _params: Any, _ctx: Any, _many: bool
    ) -> None:
        conn.info.setdefault(_STARTED, []).append(time.perf_counter())

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _after(
        conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool
    ) -> None:
        _log(statement, parameters, _elapsed(conn))

    @event.listens_for(sync_engine, "handle_error")
    def _failed(context: Any) -> None:
        if context.connection is None or not context.connection.info.get(_STARTED):
            return
        error = type(context.original_exception).__name__
        _log(context.statement or "", context.parameters, _elapsed(context.connection), error)

    if engine.dialect.driver == "asyncpg":
        _log_driver_statements(sync_engine)
    else:
        _log_transaction_ends(sync_engine)


def _elapsed(conn: Any) -> float:
    return time.perf_counter() - float(conn.info[_STARTED].pop())


def _log(statement: str, parameters: Any, seconds: float, error: str | None = None) -> None:
    fields: dict[str, Any] = {"duration_ms": round(seconds * 1000, 3)}
    if parameters:
        fields["parameters"] = _shorten(repr(parameters))
    if error is not None:
        fields["error"] = error
    log.info("%s", _BLANKS.sub(" ", statement).strip(), extra={"fields": fields})


def _shorten(text: str) -> str:
    return text if len(text) <= _PARAMETERS_MAX else text[:_PARAMETERS_MAX] + "..."


def _log_driver_statements(sync_engine: Any) -> None:
    """asyncpg sends BEGIN, COMMIT, ROLLBACK and pings itself, past SQLAlchemy's cursor:
    its query logger times them (statements with arguments came through the cursor)."""

    def on_query(record: Any) -> None:
        if not record.args:
            error = None if record.exception is None else type(record.exception).__name__
            _log(record.query, None, record.elapsed, error)

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(on_query)


def _log_transaction_ends(sync_engine: Any) -> None:
    """SQLite's COMMIT and ROLLBACK are sent by the sqlite3 module: time the dialect's
    calls of them (this engine's dialect only), when a transaction is open."""
    dialect = sync_engine.dialect
    for name, statement in (("do_commit", "COMMIT"), ("do_rollback", "ROLLBACK")):
        setattr(dialect, name, _timed(getattr(dialect, name), statement))


def _timed(end_transaction: Callable[[Any], None], statement: str) -> Callable[[Any], None]:
    def timed(dbapi_connection: Any) -> None:
        if not dbapi_connection.driver_connection.in_transaction:
            end_transaction(dbapi_connection)  # sqlite3 sends nothing then
            return
        started = time.perf_counter()
        end_transaction(dbapi_connection)
        _log(statement, None, time.perf_counter() - started)

    return timed
