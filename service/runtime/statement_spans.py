"""A client span per SQL statement, child of the call's span: operation, table, never values.

SQLAlchemy engine events, written here rather than taken from
opentelemetry-instrumentation-sqlalchemy, which names a span after the operation and
the *database* ("SELECT taskservice"), puts the driver's error message in the span
status (PostgreSQL messages can quote a value: `invalid input syntax for type
integer: "..."`), starts root traces for statements outside any call, and adds pool
listeners on every checkout. Here a span is named "SELECT tasks"; its query text is
the statement as sent, with placeholders ($1, ?) where the values go; an error is
recorded by its class and SQLSTATE only. Statements run while no sampled call is
current get no span at all.

Runs inside SQLAlchemy's greenlet, which shares the calling task's context, so the
call's span (call_spans) is the current span here.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from sqlalchemy import Join, Table, event
from sqlalchemy.engine import Connection, ExceptionContext, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement, Select, TextClause
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import FromClause

_SPAN = "_taskservice_statement_span"  # execution-context attribute holding the open span
_OPERATIONS = {"isinsert": "INSERT", "isupdate": "UPDATE", "isdelete": "DELETE"}


def trace_statements(engine: AsyncEngine, tracer: Tracer) -> None:
    """Give every statement `engine` runs within a sampled call a client span."""
    sync_engine = engine.sync_engine
    url = sync_engine.url
    constant: dict[str, Any] = {"db.system.name": sync_engine.dialect.name}
    for key, value in (
        ("db.namespace", url.database),
        ("server.address", url.host),
        ("server.port", url.port),
    ):
        if value is not None:
            constant[key] = value
    # (operation, table) per compiled statement: compiled once, cached by SQLAlchemy.
    targets: weakref.WeakKeyDictionary[Any, tuple[str, str | None]] = weakref.WeakKeyDictionary()

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _start(
        _conn: Connection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if context is None or not trace.get_current_span().is_recording():
            return
        compiled = context.compiled
        target = targets.get(compiled) if compiled is not None else None
        if target is None:
            target = _target(context, statement)
            if compiled is not None:
                targets[compiled] = target
        operation, table = target
        attributes = {
            **constant,
            "db.operation.name": operation,
            # As sent to the driver: placeholders where the bound values go.
            "db.query.text": statement,
        }
        if table is not None:
            attributes["db.collection.name"] = table
        if executemany and isinstance(parameters, list | tuple):
            attributes["db.operation.batch.size"] = len(parameters)
        name = f"{operation} {table}" if table else operation
        span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        setattr(context, _SPAN, span)

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _end(
        _conn: Connection,
        _cursor: Any,
        _statement: str,
        _parameters: Any,
        context: ExecutionContext | None,
        _executemany: bool,
    ) -> None:
        span = getattr(context, _SPAN, None)
        if span is not None:
            setattr(context, _SPAN, None)
            span.end()

    @event.listens_for(sync_engine, "handle_error")
    def _failed(failure: ExceptionContext) -> None:
        context = failure.execution_context
        span = getattr(context, _SPAN, None)
        if span is None:
            return
        setattr(context, _SPAN, None)
        error = failure.original_exception
        # The class and SQLSTATE only: a database's message can quote the row's values.
        span.set_attribute("error.type", type(error).__name__)
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str):
            span.set_attribute("db.response.status_code", sqlstate)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


def _target(context: ExecutionContext, statement: str) -> tuple[str, str | None]:
    """The statement's operation (SELECT, INSERT, ...) and the table it is about."""
    compiled = context.compiled
    element: ClauseElement | None = getattr(compiled, "statement", None)
    for flag, operation in _OPERATIONS.items():
        if getattr(context, flag, False):
            table = element.table if isinstance(element, UpdateBase) else None
            return operation, _table_name(table)
    if isinstance(element, Select):
        return "SELECT", _first_table(element.get_final_froms())
    if element is None or isinstance(element, TextClause):
        words = statement.split(None, 1)
        return (words[0].upper() if words else "SQL"), None
    return type(element).__name__.upper(), None


def _first_table(froms: Iterable[FromClause]) -> str | None:
    for from_ in froms:
        name = _table_name(from_)
        if name is not None:
            return name
    return None


def _table_name(from_: Any) -> str | None:
    """The table a FROM item reads: itself, the left side of a join, or what it aliases."""
    while True:
        if isinstance(from_, Table):
            return str(from_.name)
        if isinstance(from_, Join):
            from_ = from_.left
        elif hasattr(from_, "element") and isinstance(from_.element, FromClause):
            from_ = from_.element  # Alias, Subquery, CTE
        else:
            return None
