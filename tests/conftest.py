"""Shared fixtures: a throw-away database per backend, a real server on a socket, stubs."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.runtime.server import TaskServer, start_server
from service.settings import Settings, normalise_database_url
from service.storage import migrate
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from tests.infra.pgbouncer import PgBouncer, start_pgbouncer
from tests.infra.postgres_cluster import StreamingPair, start_streaming_pair

DEFAULT_TEST_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
START_HINT = (
    "PostgreSQL is needed for the test suite and is not reachable at {url} ({error}).\n"
    "Start the local server with:\n"
    "    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
    "or point TEST_DATABASE_URL at a PostgreSQL you may create databases on."
)
# "pgbouncer": PostgreSQL through a real transaction-pooling PgBouncer with a small pool
# (database_pooler=transaction). Only modules marked `through_pgbouncer` run with it.
BACKENDS = ("postgres", "sqlite", "pgbouncer")
THROUGH_PGBOUNCER = "through_pgbouncer"
PGBOUNCER_POOL_SIZE = 4
# URLs that lead to a transaction-pooling PgBouncer (server_settings configures them).
_POOLED_URLS: set[str] = set()


def _admin_dsn() -> tuple[str, str]:
    """(SQLAlchemy URL, asyncpg DSN) of the administrative test database."""
    url = normalise_database_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL))
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return url, dsn


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this run, dropped at the end."""
    url, dsn = _admin_dsn()
    try:
        admin = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        pytest.fail(START_HINT.format(url=url, error=error), pytrace=False)
    name = f"taskservice_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh SQLite file for this run."""
    path: Path = tmp_path_factory.mktemp("sqlite") / "taskservice.db"
    return f"sqlite+aiosqlite:///{path}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the pgbouncer backend only for modules marked `through_pgbouncer`."""
    kept, deselected = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        through_pgbouncer = callspec is not None and callspec.params.get("database_url") == (
            "pgbouncer"
        )
        if through_pgbouncer and item.get_closest_marker(THROUGH_PGBOUNCER) is None:
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[PgBouncer]:
    """A transaction-pooling PgBouncer with a small pool in front of the test PostgreSQL."""
    server = make_url(_admin_dsn()[0])
    bouncer = start_pgbouncer(
        server_host=server.host or "127.0.0.1",
        server_port=server.port or 5432,
        pool_size=PGBOUNCER_POOL_SIZE,
    )
    try:
        yield bouncer
    finally:
        bouncer.remove()


async def _create_database(suffix: str) -> tuple[str, str]:
    """(direct SQLAlchemy URL, name) of a new, empty database; drop_database() removes it."""
    url, dsn = _admin_dsn()
    admin = await asyncpg.connect(dsn, timeout=10)
    name = f"taskservice_{suffix}_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return make_url(url).set(database=name).render_as_string(hide_password=False), name


async def drop_database(name: str) -> None:
    """Drop a database made by _create_database, whoever is still connected."""
    admin = await asyncpg.connect(_admin_dsn()[1], timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def pgbouncer_url(pgbouncer: PgBouncer) -> AsyncIterator[str]:
    """A database of its own, migrated directly, reached through the PgBouncer."""
    direct_url, name = await _create_database("test_pooled")
    await asyncio.to_thread(migrate.upgrade, direct_url)
    pooled_url = pgbouncer.url(name)
    _POOLED_URLS.add(pooled_url)
    try:
        yield pooled_url
    finally:
        _POOLED_URLS.discard(pooled_url)
        await drop_database(name)


@pytest.fixture(scope="session")
def streaming_pair() -> Iterator[StreamingPair]:
    """A PostgreSQL primary and a streaming hot standby of this run's own (asynchronous
    replication). Tests that stop the standby or pause its replay must restore it."""
    pair = start_streaming_pair()
    try:
        yield pair
    finally:
        pair.remove()


def server_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings of a test server on `database_url` (through PgBouncer: pooler on)."""
    if database_url in _POOLED_URLS:
        overrides.setdefault("database_pooler", "transaction")
    overrides.setdefault("address", "127.0.0.1:0")
    return Settings(database_url=database_url, **overrides)


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each backend; API tests run once per backend.

    Synchronous, so that it starts only the backend asked for (getfixturevalue); the
    migration runs in a thread, whose asyncio.run leaves the tests' event loop alone.
    """
    if request.param == "pgbouncer":
        pooled: str = request.getfixturevalue("pgbouncer_url")
        return pooled
    url: str = request.getfixturevalue(f"{request.param}_url")
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(migrate.upgrade, url).result()
    return url


@pytest.fixture(scope="session")
async def server(database_url: str) -> AsyncIterator[TaskServer]:
    """The real server, on an ephemeral loopback port."""
    running = await start_server(server_settings(database_url))
    yield running
    await running.stop(grace=1)


@pytest.fixture(scope="session")
async def channel(server: TaskServer) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to the server, as another service would open it."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


@pytest.fixture(scope="session")
def tasks(channel: grpc.aio.Channel) -> task_service_pb2_grpc.TaskServiceStub:
    """TaskService stub."""
    return task_service_pb2_grpc.TaskServiceStub(channel)


@pytest.fixture(scope="session")
def projects(channel: grpc.aio.Channel) -> project_service_pb2_grpc.ProjectServiceStub:
    """ProjectService stub."""
    return project_service_pb2_grpc.ProjectServiceStub(channel)


@pytest.fixture(scope="session")
def workers(channel: grpc.aio.Channel) -> worker_service_pb2_grpc.WorkerServiceStub:
    """WorkerService stub."""
    return worker_service_pb2_grpc.WorkerServiceStub(channel)


@pytest.fixture(scope="session")
def health(channel: grpc.aio.Channel) -> health_pb2_grpc.HealthStub:
    """Standard gRPC health stub."""
    return health_pb2_grpc.HealthStub(channel)


@dataclass
class StatementCounter:
    """SQL statements the server's engine ran while counting."""

    statements: list[str] = field(default_factory=list)
    parameters: list[Any] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[StatementCounter]:
    """Count every statement sent to the database through `engine`."""
    counter = StatementCounter()

    def on_execute(*args: Any) -> None:
        counter.statements.append(str(args[2]))
        counter.parameters.append(args[3])

    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        yield counter
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_execute)


@pytest.fixture
def statements(server: TaskServer) -> Iterator[StatementCounter]:
    """Counts the server's SQL statements during one test (BEGIN/COMMIT excluded)."""
    with count_statements(server.engine) as counter:
        yield counter


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for `condition()` to hold, yielding to the loop; fail after `timeout`."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def unique(prefix: str) -> str:
    """A name no other test uses (tests share one database per backend)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def project(projects: project_service_pb2_grpc.ProjectServiceStub) -> resources_pb2.Project:
    """A new, empty project of this test's own."""
    request = project_service_pb2.CreateProjectRequest(
        project=resources_pb2.Project(name=unique("project"), description="for a test")
    )
    created: resources_pb2.Project = await projects.CreateProject(request)
    return created


@pytest.fixture
async def worker(workers: worker_service_pb2_grpc.WorkerServiceStub) -> resources_pb2.Worker:
    """A new worker of this test's own."""
    request = worker_service_pb2.CreateWorkerRequest(
        worker=resources_pb2.Worker(name="Ada", email=f"{unique('ada')}@example.com")
    )
    created: resources_pb2.Worker = await workers.CreateWorker(request)
    return created


async def create_task(
    tasks: task_service_pb2_grpc.TaskServiceStub, project_id: int, **fields: Any
) -> resources_pb2.Task:
    """Create a task in `project_id` through the API (title defaults to a unique one)."""
    fields.setdefault("title", unique("task"))
    request = task_service_pb2.CreateTaskRequest(
        task=resources_pb2.Task(project_id=project_id, **fields)
    )
    created: resources_pb2.Task = await tasks.CreateTask(request)
    return created
