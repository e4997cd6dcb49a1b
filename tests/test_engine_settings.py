"""Engine settings through a real server: the SQL statement log and pool_recycle."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy import event

from service.runtime.logs import JsonFormatter, TextFormatter
from service.runtime.server import TaskServer, start_server
from service.settings import Settings
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import _admin_dsn, unique
from tests.rpc_errors import expect_failure

SQL_LOGGER = "service.storage.sql"


@asynccontextmanager
async def running(database_url: str, **settings: Any) -> AsyncIterator[TaskServer]:
    """A server of this test's own with the given settings."""
    server = await start_server(
        Settings(database_url=database_url, address="127.0.0.1:0", **settings)
    )
    try:
        yield server
    finally:
        await server.stop(grace=0)


@asynccontextmanager
async def task_stub(server: TaskServer) -> AsyncIterator[task_service_pb2_grpc.TaskServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield task_service_pb2_grpc.TaskServiceStub(channel)


async def new_project_id(server: TaskServer) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = project_service_pb2_grpc.ProjectServiceStub(channel)
        created = await stub.CreateProject(
            project_service_pb2.CreateProjectRequest(name=unique("engine"))
        )
        return int(created.id)


@contextmanager
def captured_sql() -> Iterator[io.StringIO]:
    """The SQL log lines, formatted as JSON, while the block runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(SQL_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- sql_log ------------------------------------------------------------------------------


async def test_sql_log_logs_every_statement_with_its_duration(database_url: str) -> None:
    async with running(database_url, sql_log=True) as server, task_stub(server) as tasks:
        project_id = await new_project_id(server)
        with captured_sql() as stream:
            created = await tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    task=resources_pb2.Task(project_id=project_id, title="logged")
                )
            )
            await tasks.GetTask(task_service_pb2.GetTaskRequest(id=created.id))
            # asyncpg's query logger reports through the event loop: let it run.
            await asyncio.sleep(0)
    logged = lines(stream)
    statements = [entry["message"].rstrip(";") for entry in logged]
    assert all(entry["duration_ms"] >= 0 for entry in logged), logged
    assert any("INSERT INTO tasks" in s for s in statements), statements
    assert any(s.startswith("SELECT tasks.id") and "WHERE tasks.id" in s for s in statements)
    assert all("\n" not in s for s in statements)
    # The transaction's ends are statements too, even those the driver sends itself.
    assert "COMMIT" in statements, statements
    begin = "BEGIN IMMEDIATE" if database_url.startswith("sqlite") else "BEGIN ISOLATION LEVEL"
    assert any(s.startswith(begin) for s in statements), statements
    # Parameters are shown: the bound id of the GetTask.
    assert any(str(created.id) in entry.get("parameters", "") for entry in logged)


async def test_sql_log_line_in_text_format_reads_statement_then_duration(
    database_url: str,
) -> None:
    async with running(database_url, sql_log=True) as server, task_stub(server) as tasks:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(TextFormatter())
        logger = logging.getLogger(SQL_LOGGER)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            await expect_failure(
                tasks.GetTask(task_service_pb2.GetTaskRequest(id=987_654_321)),
                grpc.StatusCode.NOT_FOUND,
            )
        finally:
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
    [line] = [text for text in stream.getvalue().splitlines() if "FROM tasks" in text]
    assert " INFO service.storage.sql: SELECT tasks.id" in line
    assert " duration_ms=" in line
    assert "parameters=" in line


async def test_sql_log_is_off_by_default(server: TaskServer, tasks: Any, project: Any) -> None:
    assert Settings().sql_log is False
    with captured_sql() as stream:
        await tasks.ListTasks(task_service_pb2.ListTasksRequest(project_id=project.id))
        await asyncio.sleep(0)
    assert stream.getvalue() == ""


# --- pool_recycle -------------------------------------------------------------------------


class Connects:
    """Counts the new connections an engine opens; the PostgreSQL pid of the last one used."""

    def __init__(self, server: TaskServer) -> None:
        self.count = 0
        self.last_pid = 0
        event.listen(server.engine.sync_engine, "connect", self._on_connect)
        event.listen(server.engine.sync_engine, "checkout", self._on_checkout)

    def _on_connect(self, _dbapi_connection: Any, _record: Any) -> None:
        self.count += 1

    def _on_checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        if hasattr(driver, "get_server_pid"):
            self.last_pid = driver.get_server_pid()


async def age(seconds: float) -> None:
    """Let pooled connections grow older than `seconds`: the pool measures age by the clock."""
    deadline = time.monotonic() + seconds
    while time.monotonic() <= deadline:
        await asyncio.sleep(0.05)


async def test_pool_recycle_replaces_old_connections_at_checkout(database_url: str) -> None:
    recycle = 0.5
    async with running(database_url, pool_recycle=recycle, pool_size=1) as server:
        project_id = await new_project_id(server)
        connects = Connects(server)
        async with task_stub(server) as tasks:
            request = task_service_pb2.ListTasksRequest(project_id=project_id)
            await tasks.ListTasks(request)
            await tasks.ListTasks(request)
            assert connects.count == 0, "young connections are reused"
            await age(recycle)
            await tasks.ListTasks(request)
            assert connects.count == 1, "an old connection is replaced at checkout"


async def test_pool_recycle_is_off_by_default(server: TaskServer) -> None:
    assert Settings().pool_recycle == 0
    assert server.engine.pool._recycle == -1  # type: ignore[attr-defined]  # SQLAlchemy's "never"


@pytest.mark.parametrize("recycle", [0.5, 0.0])
async def test_connection_cut_while_resting_is_replaced_when_recycled(
    postgres_url: str, recycle: float
) -> None:
    """A balancer or failover cutting old connections: with pool_recycle the next call gets
    a fresh connection; without it (and without the idle ping) the call fails."""
    settings = {"pool_recycle": recycle, "pool_size": 1, "pool_ping_after_idle": 0}
    async with running(postgres_url, **settings) as server, task_stub(server) as tasks:
        project_id = await new_project_id(server)
        connects = Connects(server)
        request = task_service_pb2.ListTasksRequest(project_id=project_id)
        await tasks.ListTasks(request)
        assert await _terminate(connects.last_pid) == 1
        await age(recycle)
        if recycle:
            await tasks.ListTasks(request)
            assert connects.count >= 1
        else:
            await expect_failure(tasks.ListTasks(request), grpc.StatusCode.UNAVAILABLE)


async def _terminate(pid: int) -> int:
    admin = await asyncpg.connect(_admin_dsn()[1], timeout=10)
    try:
        return int(await admin.fetchval("SELECT count(pg_terminate_backend($1))", pid))
    finally:
        await admin.close()
