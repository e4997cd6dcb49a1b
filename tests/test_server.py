"""The server as a whole: reflection, health, binding, database outages, shutdown, CLI."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy.engine import make_url

from service.__main__ import _parser, load_settings
from service.runtime.server import SERVICE_NAMES, PortInUse, TaskServer, start_server
from service.settings import Settings, normalise_database_url
from service.storage import migrate
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import _admin_dsn, create_task, unique
from tests.infra.service_process import run_service, service_process
from tests.rpc_errors import read_failure

TIMEOUT = 20.0  # upper bound for anything we wait on; never a fixed delay
GRACE = 2 * TIMEOUT  # shutdown grace in the shutdown tests: longer than any wait of theirs
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TASK_SERVICE = "taskmanager.v1.TaskService"
# What a database driver or the OS would say; none of it may reach a client.
DRIVER_TEXT = (
    "asyncpg",
    "aiosqlite",
    "sqlite3",
    "sqlalchemy",
    "errno",
    "connect call failed",
    "connection refused",
    "unable to open",
    "operationalerror",
    "oserror",
    "traceback",
    "127.0.0.1",
    "nope",
)


# --- reflection ---------------------------------------------------------------------


async def _reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT)
    responses = [response async for response in call]
    assert len(responses) == 1
    return responses[0]


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    response = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in response.list_services_response.service}
    assert names >= {
        "taskmanager.v1.TaskService",
        "taskmanager.v1.ProjectService",
        "taskmanager.v1.WorkerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_reflection_describes_the_task_service(channel: grpc.aio.Channel) -> None:
    response = await _reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=TASK_SERVICE)
    )
    assert response.WhichOneof("message_response") == "file_descriptor_response"
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    services = {
        f"{file.package}.{service.name}": {method.name for method in service.method}
        for file in files
        for service in file.service
    }
    assert services[TASK_SERVICE] >= {
        "CreateTask",
        "GetTask",
        "ListTasks",
        "StreamTasks",
        "UpdateTask",
        "DeleteTask",
    }


async def test_reflection_reports_unknown_symbols(channel: grpc.aio.Channel) -> None:
    response = await _reflect(
        channel,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="taskmanager.v1.Nope"),
    )
    assert response.WhichOneof("message_response") == "error_response"
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


# --- health -------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", *SERVICE_NAMES])
async def test_health_reports_serving(health: health_pb2_grpc.HealthStub, service: str) -> None:
    response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert response.status == SERVING


async def test_health_of_an_unknown_service_is_not_found(
    health: health_pb2_grpc.HealthStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await health.Check(health_pb2.HealthCheckRequest(service="nope.v1.Nope"), timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_watch_streams_the_status(health: health_pb2_grpc.HealthStub) -> None:
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    try:
        response = await asyncio.wait_for(watch.read(), TIMEOUT)
        assert response.status == SERVING
    finally:
        watch.cancel()
        gc.collect()  # report the server's never-awaited Watch coroutine here, not later


# --- binding ------------------------------------------------------------------------


async def test_a_taken_port_is_an_error(
    server: TaskServer, database_url: str, health: health_pb2_grpc.HealthStub
) -> None:
    settings = Settings(address=f"127.0.0.1:{server.port}", database_url=database_url)
    with pytest.raises(PortInUse, match=str(server.port)):
        await start_server(settings)
    # The first server keeps its port and keeps answering.
    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert response.status == SERVING


# --- database outages ---------------------------------------------------------------


@asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[tuple[TaskServer, grpc.aio.Channel]]:
    running = await start_server(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, channel
    finally:
        await running.stop(grace=1)


def _assert_unavailable_without_driver_text(error: grpc.aio.AioRpcError) -> None:
    failure = read_failure(error, grpc.StatusCode.UNAVAILABLE)
    assert failure.info.reason == "DATABASE_UNAVAILABLE"
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
    seen = " ".join(
        [
            failure.message,
            *failure.info.metadata.keys(),
            *failure.info.metadata.values(),
            raw.decode("utf-8", "replace"),
        ]
    ).lower()
    leaked = [text for text in DRIVER_TEXT if text in seen]
    assert not leaked, f"driver details reached the client: {leaked} in {seen!r}"


async def _assert_project_calls_unavailable(channel: grpc.aio.Channel) -> None:
    projects = project_service_pb2_grpc.ProjectServiceStub(channel)
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: projects.GetProject(project_service_pb2.GetProjectRequest(id=1), timeout=TIMEOUT),
        lambda: projects.CreateProject(
            project_service_pb2.CreateProjectRequest(
                project=resources_pb2.Project(name=unique("project"))
            ),
            timeout=TIMEOUT,
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call()
        _assert_unavailable_without_driver_text(raised.value)


async def test_unreachable_postgres_is_unavailable() -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nope",
        address="127.0.0.1:0",
        pool_timeout=1,
    )
    async with _running(settings) as (_, channel):
        await _assert_project_calls_unavailable(channel)


async def test_unopenable_sqlite_is_unavailable(tmp_path: Path) -> None:
    # The "database file" is a directory: SQLite cannot open it.
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}", address="127.0.0.1:0")
    async with _running(settings) as (_, channel):
        await _assert_project_calls_unavailable(channel)


# --- graceful shutdown --------------------------------------------------------------


@pytest.fixture
async def migrated_postgres_url(postgres_url: str) -> AsyncIterator[str]:
    """A migrated PostgreSQL database of this test's own.

    The shutdown tests hold an ACCESS EXCLUSIVE lock on `tasks`; in the database the
    other tests share, any connection they left in a transaction (the session server's
    pool, a cancelled RPC's session) would make that LOCK wait, or be blocked by it.
    """
    _, dsn = _admin_dsn()
    name = f"taskservice_shutdown_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn, timeout=TIMEOUT)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        try:
            await asyncio.to_thread(migrate.upgrade, url)
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass
class TableLock:
    """An ACCESS EXCLUSIVE lock on `tasks`, held by a connection of the test's own."""

    connection: asyncpg.Connection
    transaction: Any
    released: bool = False

    async def wait_for_a_blocked_query(self) -> None:
        """Return once another backend's statement waits on this lock.

        Asked of PostgreSQL itself, so it holds however the server sends its SQL (ORM,
        Core, or straight on the driver, where SQLAlchemy's statement events never fire).
        Each check is a round trip: the loop never spins without yielding.
        """
        async with asyncio.timeout(TIMEOUT):
            while not await self.connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity"
                " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid)))"
            ):
                pass

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.transaction.rollback()


@asynccontextmanager
async def _tasks_table_locked(database_url: str) -> AsyncIterator[TableLock]:
    """Hold an ACCESS EXCLUSIVE lock on `tasks` until release() (or exit)."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=TIMEOUT)
    transaction = connection.transaction()
    await transaction.start()
    await connection.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
    lock = TableLock(connection, transaction)
    try:
        yield lock
    finally:
        await lock.release()
        await connection.close()


async def _wait_until_refused(address: str) -> None:
    """Once stopping, health on a new connection says NOT_SERVING (never SERVING again)
    and, once the drain delay is over, a new API call is refused UNAVAILABLE with
    SERVER_SHUTTING_DOWN: retryable, and its handler never ran."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        async with grpc.aio.insecure_channel(address) as fresh:
            response = await health_pb2_grpc.HealthStub(fresh).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT
            )
            projects = project_service_pb2_grpc.ProjectServiceStub(fresh)
            try:
                await projects.ListProjects(
                    project_service_pb2.ListProjectsRequest(), timeout=TIMEOUT
                )
            except grpc.aio.AioRpcError as error:
                failure = read_failure(error, grpc.StatusCode.UNAVAILABLE)
                assert failure.info.reason == "SERVER_SHUTTING_DOWN"
                assert response.status == NOT_SERVING
                return
        assert asyncio.get_running_loop().time() < deadline, "server kept accepting new RPCs"


async def _stop_quietly(running: TaskServer, stopping: asyncio.Task[None] | None) -> None:
    if stopping is None:
        await running.stop(grace=0)
        return
    if not stopping.done():
        # The test failed mid-shutdown: cut the grace short instead of waiting it out
        # (a second grpc stop with a smaller grace wins; it is a no-op once stopped).
        await running.server.stop(0)
    await asyncio.wait_for(stopping, TIMEOUT)


async def test_graceful_shutdown_finishes_in_flight_rpcs(migrated_postgres_url: str) -> None:
    running = await start_server(
        Settings(database_url=migrated_postgres_url, address="127.0.0.1:0")
    )
    address = f"127.0.0.1:{running.port}"
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            projects = project_service_pb2_grpc.ProjectServiceStub(channel)
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)
            project = await projects.CreateProject(
                project_service_pb2.CreateProjectRequest(
                    project=resources_pb2.Project(name=unique("shutdown"))
                )
            )
            task = await create_task(tasks, project.id)
            health = health_pb2_grpc.HealthStub(channel)
            response = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert response.status == SERVING

            async with _tasks_table_locked(migrated_postgres_url) as lock:
                in_flight = asyncio.ensure_future(
                    tasks.ListTasks(
                        task_service_pb2.ListTasksRequest(project_id=project.id),
                        timeout=TIMEOUT,
                    )
                )
                # The server sent its query, which waits on our lock: the RPC is in flight.
                await lock.wait_for_a_blocked_query()
                # The grace outlasts everything below: the RPC must finish because it may,
                # not because a busy machine happened to be quick enough.
                stopping = asyncio.create_task(running.stop(grace=GRACE))

                await _wait_until_refused(address)
                for service in ("", *SERVICE_NAMES):
                    status = await running.health.Check(
                        health_pb2.HealthCheckRequest(service=service), None
                    )
                    assert status.status == NOT_SERVING, service
                assert not in_flight.done()
                await lock.release()

            response = await asyncio.wait_for(in_flight, TIMEOUT)
            assert [t.id for t in response.tasks] == [task.id]
            await asyncio.wait_for(stopping, TIMEOUT)

            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await projects.GetProject(
                    project_service_pb2.GetProjectRequest(id=project.id), timeout=TIMEOUT
                )
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await _stop_quietly(running, stopping)


async def test_shutdown_ends_streams_after_a_batch_with_a_resume_token(
    migrated_postgres_url: str,
) -> None:
    settings = Settings(database_url=migrated_postgres_url, address="127.0.0.1:0")
    running = await start_server(settings)
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            projects = project_service_pb2_grpc.ProjectServiceStub(channel)
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)
            project = await projects.CreateProject(
                project_service_pb2.CreateProjectRequest(
                    project=resources_pb2.Project(name=unique("stream-shutdown"))
                )
            )
            created = [(await create_task(tasks, project.id)).id for _ in range(3)]
            request = task_service_pb2.StreamTasksRequest(project_id=project.id, batch_size=1)

            async with _tasks_table_locked(migrated_postgres_url) as lock:
                stream = tasks.StreamTasks(request, timeout=TIMEOUT)
                first = asyncio.ensure_future(stream.read())
                await lock.wait_for_a_blocked_query()
                # Shutdown begins while the first batch is being read.
                stopping = asyncio.create_task(running.stop(grace=GRACE))
                await asyncio.wait_for(running.deps.shutting_down.wait(), TIMEOUT)
                await lock.release()

            batch = await asyncio.wait_for(first, TIMEOUT)
            assert [t.id for t in batch.tasks] == created[:1]
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await asyncio.wait_for(stream.read(), TIMEOUT)
            failure = read_failure(raised.value, grpc.StatusCode.UNAVAILABLE)
            assert failure.info.reason == "SERVER_SHUTTING_DOWN"
            await asyncio.wait_for(stopping, TIMEOUT)
    finally:
        await _stop_quietly(running, stopping)

    # A new server (a restart, or another replica) continues after that batch.
    async with _running(settings) as (_, channel):
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        resumed = task_service_pb2.StreamTasksRequest(
            project_id=project.id, batch_size=1, resume_token=batch.resume_token
        )
        rest = [t.id async for response in tasks.StreamTasks(resumed) for t in response.tasks]
    assert rest == created[1:]


# --- the process --------------------------------------------------------------------


async def test_process_serves_until_sigterm_and_exits_cleanly(tmp_path: Path) -> None:
    database = tmp_path / "x.db"
    flags = ("--migrate", "--database-url", f"sqlite+aiosqlite:///{database}")
    async with (
        service_process(*flags) as server,  # SIGTERM at the end: it must exit 0
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert response.status == SERVING
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        created = await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(project=resources_pb2.Project(name="demo")),
            timeout=TIMEOUT,
        )
        assert created.id > 0
        assert created.name == "demo"
    assert "stopped" in server.log
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT name FROM projects").fetchall() == [("demo",)]


async def test_help_names_the_flags() -> None:
    code, stdout, _ = await run_service("--help")
    assert code == 0
    assert "--database-url" in stdout
    assert "--migrate" in stdout


async def test_migrate_command_creates_the_schema(tmp_path: Path) -> None:
    database = tmp_path / "migrated.db"
    code, _, stderr = await run_service("migrate", "--database-url", f"sqlite:///{database}")
    assert code == 0, stderr
    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"projects", "workers", "tasks", "alembic_version"} <= tables


async def test_invalid_configuration_exits_2(tmp_path: Path) -> None:
    code, _, stderr = await run_service(
        "--pool-size", "0", "--database-url", f"sqlite:///{tmp_path}/x"
    )
    assert code == 2
    assert "pool_size" in stderr


async def test_process_exits_1_when_the_port_is_taken(server: TaskServer, tmp_path: Path) -> None:
    code, _, stderr = await run_service(
        "serve",
        "--address",
        f"127.0.0.1:{server.port}",
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path}/x.db",
    )
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in stderr


# --- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/tasks", "postgresql+asyncpg://u:p@db:5432/tasks"),
        ("postgresql://u@db/tasks", "postgresql+asyncpg://u@db/tasks"),
        ("postgresql+asyncpg://u@db/tasks", "postgresql+asyncpg://u@db/tasks"),
        ("sqlite:///var/x.db", "sqlite+aiosqlite:///var/x.db"),
        ("sqlite+aiosqlite:///var/x.db", "sqlite+aiosqlite:///var/x.db"),
    ],
)
def test_database_urls_are_normalised(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected
    assert Settings(database_url=given).database_url == expected


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSERVICE_POOL_SIZE", "3")
    monkeypatch.setenv("TASKSERVICE_DATABASE_URL", "postgres://u@db/tasks")
    settings = Settings()
    assert settings.pool_size == 3
    assert settings.database_url == "postgresql+asyncpg://u@db/tasks"
    assert not settings.is_sqlite


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSERVICE_POOL_SIZE", "3")
    monkeypatch.setenv("TASKSERVICE_MIGRATE", "true")
    settings = load_settings(_parser().parse_args(["--pool-size", "7", "--no-migrate"]))
    assert settings.pool_size == 7
    assert settings.migrate is False
    assert load_settings(_parser().parse_args([])).pool_size == 3
