"""PostgreSQL statements per call (round trips): TaskService and the REST peer run in-process."""

from __future__ import annotations

import asyncio
import functools
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.core.servers import free_port
from bench.perf.calls import GrpcCall, HttpCall

WARM = 3  # calls first, so pools are connected and statement caches filled
COUNTED = 10
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)
# Kinds in the order a call sends them; the rest (the queries) go in between.
_FIRST, _LAST = ("ping", "BEGIN"), ("COMMIT", "ROLLBACK")


@dataclass(frozen=True)
class StatementCount:
    """Statements per call of one RPC, by kind."""

    label: str
    per_call: float
    kinds: tuple[tuple[str, float], ...]

    def describe(self) -> str:
        """e.g. `6: BEGIN 2, ping 1, SELECT tasks 1, ROLLBACK 2`."""
        parts = ", ".join(f"{kind} {count:g}" for kind, count in self.kinds)
        return f"{self.per_call:g}: {parts}"


class StatementLog:
    """Every statement an engine's connections send, by kind."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.kinds: Counter[str] = Counter()
        sync_engine = engine.sync_engine
        event.listen(sync_engine, "connect", self._on_connect)
        event.listen(sync_engine, "before_cursor_execute", self._on_execute)

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(self._on_query)

    def _on_query(self, record: Any) -> None:
        # asyncpg logs what it sends without SQLAlchemy's cursor: pings and transactions.
        self.kinds[kind(record.query)] += 1

    def _on_execute(self, *args: Any) -> None:
        statement: str = args[2]
        self.kinds[kind(statement)] += 1

    async def count(self, label: str, call: Callable[[], Awaitable[object]]) -> StatementCount:
        """Statements per call of `call` (after warming it up)."""
        for _ in range(WARM):
            await call()
        self.kinds.clear()
        for _ in range(COUNTED):
            await call()
        per_kind = tuple((name, self.kinds[name] / COUNTED) for name in _ordered(self.kinds))
        return StatementCount(label, sum(self.kinds.values()) / COUNTED, per_kind)


def _ordered(kinds: Counter[str]) -> list[str]:
    middle = sorted(name for name in kinds if name not in (*_FIRST, *_LAST))
    return [*(n for n in _FIRST if n in kinds), *middle, *(n for n in _LAST if n in kinds)]


def kind(statement: str) -> str:
    """`BEGIN`, `ping`, `SELECT tasks`, `INSERT audit_events`, ..."""
    text = statement.strip().rstrip(";").strip()
    if not text:
        return "ping"
    verb = text.split()[0].upper()
    if verb in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        table = _TABLE.search(text)
        return f"{verb} {table.group(1)}" if table else f"{verb} {text[7:40].strip()}"
    return verb


async def count_service(url: str, calls: dict[str, GrpcCall]) -> list[StatementCount]:
    """Statements per call of TaskService RPCs (label -> call), first request variant."""
    from service.runtime.server import start_server
    from service.settings import Settings

    settings = Settings(database_url=url, address="127.0.0.1:0", log_level="WARNING")
    server = await start_server(settings)
    log = StatementLog(server.engine)
    counts = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            for label, call in calls.items():
                send = functools.partial(
                    channel.unary_unary(call.path), call.requests[0].SerializeToString()
                )
                counts.append(await log.count(label, send))
    finally:
        await server.stop(0)
    return counts


async def count_rest(url: str, calls: dict[str, HttpCall]) -> list[StatementCount]:
    """Statements per request of the REST peer (label -> call), first request variant."""
    import uvicorn

    from bench.perf.rest_app import make_app

    app = make_app(url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    log = StatementLog(app.state.engine)
    counts = []
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        for label, call in calls.items():
            url = f"http://127.0.0.1:{port}"
            send = functools.partial(asyncio.to_thread, call.requests[0].send, url)
            counts.append(await log.count(label, send))
    finally:
        server.should_exit = True
        await serving
        await app.state.engine.dispose()
    return counts
