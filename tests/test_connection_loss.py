"""Losing database connections under load: UNAVAILABLE (retryable), never INTERNAL, then recovery.

The server does not ping every pooled connection before use (that costs three
statements per RPC); these tests prove what replaces it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from service.runtime.server import TaskServer, start_server
from service.settings import Settings
from service.storage import migrate
from taskmanager.v1 import project_service_pb2, task_service_pb2, task_service_pb2_grpc
from taskmanager.v1 import project_service_pb2_grpc as project_grpc
from tests.conftest import _admin_dsn

KILL_OTHERS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = $1 AND pid <> pg_backend_pid()"
)


@pytest.fixture
async def own_database() -> AsyncIterator[tuple[str, str]]:
    """(SQLAlchemy URL, name) of a migrated PostgreSQL database only this test uses."""
    url, dsn = _admin_dsn()
    admin = await asyncpg.connect(dsn, timeout=10)
    name = f"taskservice_loss_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        await asyncio.to_thread(migrate.upgrade, database_url)
        yield database_url, name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def lossy_server(own_database: tuple[str, str]) -> AsyncIterator[TaskServer]:
    running = await start_server(
        Settings(database_url=own_database[0], address="127.0.0.1:0", pool_size=8)
    )
    yield running
    await running.stop(grace=0)


async def _kill_connections(name: str) -> int:
    admin = await asyncpg.connect(_admin_dsn()[1], timeout=10)
    try:
        return int(await admin.fetchval(KILL_OTHERS, name))
    finally:
        await admin.close()


async def test_killed_connections_under_load_give_unavailable_then_recover(
    lossy_server: TaskServer, own_database: tuple[str, str]
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{lossy_server.port}") as channel:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        project = await project_grpc.ProjectServiceStub(channel).CreateProject(
            project_service_pb2.CreateProjectRequest(name="loss")
        )
        task = await tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(task={"project_id": project.id, "title": "t"})
        )
        outcomes: Counter[grpc.StatusCode] = Counter()
        stop = asyncio.Event()
        killed_at_least_once = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    await tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id), timeout=10)
                    outcomes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code()] += 1

        clients = [asyncio.create_task(client()) for _ in range(16)]
        async with asyncio.timeout(60):
            while outcomes[grpc.StatusCode.OK] < 200:
                await asyncio.sleep(0)
            for _ in range(3):  # kill every server connection, three times, under load
                assert await _kill_connections(own_database[1]) > 0
                killed_at_least_once.set()
                served = outcomes[grpc.StatusCode.OK]
                while outcomes[grpc.StatusCode.OK] < served + 200:
                    await asyncio.sleep(0)
        stop.set()
        await asyncio.gather(*clients)

    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
    # Recovery: every kill was followed by 200 more successful calls (waited for above).
    assert outcomes[grpc.StatusCode.OK] >= 800


async def test_connections_killed_while_idle_are_replaced_without_errors(
    own_database: tuple[str, str],
) -> None:
    # A zero idle threshold pings every returning connection, as if all had been idle.
    running = await start_server(
        Settings(database_url=own_database[0], address="127.0.0.1:0", pool_ping_after_idle=1e-9)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            projects = project_grpc.ProjectServiceStub(channel)
            request = project_service_pb2.ListProjectsRequest()
            await asyncio.gather(*(projects.ListProjects(request) for _ in range(8)))
            assert await _kill_connections(own_database[1]) > 0
            results = await asyncio.gather(*(projects.ListProjects(request) for _ in range(8)))
            assert len(results) == 8  # no call failed: dead idle connections were replaced
    finally:
        await running.stop(grace=0)
