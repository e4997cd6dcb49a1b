"""Operations: deadlines reach PostgreSQL, health follows the database, multi-process serving."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import event, func, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlmodel import select

from service.api.errors import to_rpc_status
from service.runtime.server import SERVICE_NAMES, TaskServer, start_server
from service.runtime.supervisor import ConfigurationError, check_settings, worker_settings
from service.settings import Settings
from service.storage import migrate
from service.storage.database import UnitOfWork, create_engine, make_session_factory
from service.storage.errors import DeadlineExceeded, to_service_error
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import count_statements, create_task, unique
from tests.infra.processes import free_port
from tests.infra.service_process import run_service, service_process
from tests.rpc_errors import read_failure

TIMEOUT = 30.0  # upper bound for anything we wait on; never a fixed delay
POLL = 0.05
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ALL_SERVICES = ("", *SERVICE_NAMES)
FULL = resources_pb2.TASK_VIEW_FULL


# --- helpers --------------------------------------------------------------------------


def _dsn(url: str) -> str:
    """asyncpg DSN of a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _database_name(url: str) -> str:
    name = make_url(url).database
    assert name
    return name


async def _eventually(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT
) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(POLL)


@pytest.fixture
async def pg_url(postgres_url: str) -> str:
    """The run's PostgreSQL database, migrated (idempotent)."""
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    return postgres_url


@pytest.fixture
async def admin(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the run's database, for pg_stat_activity and DDL."""
    connection = await asyncpg.connect(_dsn(postgres_url), timeout=TIMEOUT)
    yield connection
    await connection.close()


@asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[tuple[TaskServer, grpc.aio.Channel]]:
    running = await start_server(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, channel
    finally:
        await running.stop(grace=1)


@asynccontextmanager
async def _row_locked(url: str, task_id: int) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Hold a FOR UPDATE lock on one task row until the returned release() (or exit)."""
    connection = await asyncpg.connect(_dsn(url), timeout=TIMEOUT)
    transaction = connection.transaction()
    await transaction.start()
    await connection.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", task_id)
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await transaction.rollback()

    try:
        yield release
    finally:
        await release()
        await connection.close()


async def _waiting_on_a_lock(admin: asyncpg.Connection, database: str) -> bool:
    count: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        database,
    )
    return bool(count)


async def _active_queries(admin: asyncpg.Connection, database: str) -> list[str]:
    """Statements running now in `database`, other than this connection's."""
    rows = await admin.fetch(
        "SELECT query FROM pg_stat_activity WHERE datname = $1 AND state = 'active' "
        "AND pid <> pg_backend_pid()",
        database,
    )
    return [row["query"] for row in rows]


async def _project_with_task(
    channel: grpc.aio.Channel,
) -> tuple[resources_pb2.Project, resources_pb2.Task]:
    projects = project_service_pb2_grpc.ProjectServiceStub(channel)
    project = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(
            project=resources_pb2.Project(name=unique("operations"))
        ),
        timeout=TIMEOUT,
    )
    task = await create_task(task_service_pb2_grpc.TaskServiceStub(channel), project.id)
    return project, task


def _update_title(
    channel: grpc.aio.Channel, task_id: int, title: str, timeout: float | None
) -> asyncio.Future[resources_pb2.Task]:
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    request = task_service_pb2.UpdateTaskRequest(task=resources_pb2.Task(id=task_id, title=title))
    updated: asyncio.Future[resources_pb2.Task] = asyncio.ensure_future(
        tasks.UpdateTask(request, timeout=timeout)
    )
    return updated


# --- deadlines ------------------------------------------------------------------------


async def test_update_blocked_past_its_deadline_is_cancelled_in_postgres(
    pg_url: str, admin: asyncpg.Connection
) -> None:
    database = _database_name(pg_url)
    async with _running(Settings(database_url=pg_url, address="127.0.0.1:0")) as (_, channel):
        _, task = await _project_with_task(channel)
        async with _row_locked(pg_url, task.id):
            call = _update_title(channel, task.id, "never", timeout=3)

            async def blocked_or_over() -> bool:
                return call.done() or await _waiting_on_a_lock(admin, database)

            await _eventually(blocked_or_over, "the update waits on the row lock")
            assert not call.done(), "the call ended before its query reached the lock"
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await asyncio.wait_for(call, TIMEOUT)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            async def nothing_running() -> bool:
                return not await _active_queries(admin, database)

            # The lock is still held: only a cancel can have ended the server's query.
            await _eventually(nothing_running, "the server's query is gone", timeout=10)


@asynccontextmanager
async def _table_locked(url: str, table: str) -> AsyncIterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on `table`: even plain reads of it wait."""
    connection = await asyncpg.connect(_dsn(url), timeout=TIMEOUT)
    try:
        async with connection.transaction():
            await connection.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await connection.close()


async def test_read_blocked_past_its_deadline_leaves_no_query_behind(
    pg_url: str, admin: asyncpg.Connection
) -> None:
    # Reads run outside a transaction (no statement_timeout): the deadline must still
    # reach PostgreSQL, through the cancelled handler.
    database = _database_name(pg_url)
    async with _running(Settings(database_url=pg_url, address="127.0.0.1:0")) as (_, channel):
        _, task = await _project_with_task(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        async with _table_locked(pg_url, "tasks"):
            call = asyncio.ensure_future(
                tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id), timeout=3)
            )

            async def blocked_or_over() -> bool:
                return call.done() or await _waiting_on_a_lock(admin, database)

            await _eventually(blocked_or_over, "the read waits on the table lock")
            assert not call.done(), "the call ended before its query reached the lock"
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await asyncio.wait_for(call, TIMEOUT)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            async def nothing_waiting() -> bool:
                return not await _waiting_on_a_lock(admin, database)

            # The lock is still held: only a cancel can have ended the server's query.
            await _eventually(nothing_waiting, "the server's read is gone", timeout=10)
        # The server recovers: the same read succeeds once the table is free.
        assert (await tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id))).id == task.id


async def test_a_statement_running_past_the_deadline_is_deadline_exceeded(pg_url: str) -> None:
    engine = create_engine(Settings(database_url=pg_url))
    started = time.monotonic()
    try:
        uow = UnitOfWork(make_session_factory(engine), deadline=started + 0.3)
        async with uow:
            with pytest.raises(sa_exc.DBAPIError) as raised:
                await uow.session.exec(select(func.pg_sleep(60)))
    finally:
        await engine.dispose()
    assert time.monotonic() - started < TIMEOUT
    error = to_service_error(raised.value)
    assert isinstance(error, DeadlineExceeded)
    assert to_rpc_status(error).code == grpc.StatusCode.DEADLINE_EXCEEDED


def _statement_timeouts(statements: Sequence[str], parameters: Sequence[Any]) -> list[int]:
    """The statement_timeout values (ms) the server set, in order."""
    found = []
    for statement, params in zip(statements, parameters, strict=True):
        if "statement_timeout" in statement:
            values = list(params.values()) if isinstance(params, dict) else list(params)
            found.append(int(values[0]))
    return found


async def test_every_write_with_a_deadline_bounds_its_transactions(pg_url: str) -> None:
    settings = Settings(database_url=pg_url, address="127.0.0.1:0")
    async with _running(settings) as (running, channel):
        project, task = await _project_with_task(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        calls: dict[str, Callable[[float | None], Awaitable[Any]]] = {
            "UpdateTask": lambda t: _update_title(channel, task.id, unique("title"), t),
            "CreateTask": lambda t: tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    task=resources_pb2.Task(project_id=project.id, title="bounded")
                ),
                timeout=t,
            ),
            "UpdateProject": lambda t: projects.UpdateProject(
                project_service_pb2.UpdateProjectRequest(
                    project=resources_pb2.Project(id=project.id, description=unique("d"))
                ),
                timeout=t,
            ),
        }
        for name, call in calls.items():
            with count_statements(running.engine) as counter:
                await call(20.0)
            timeouts = _statement_timeouts(counter.statements, counter.parameters)
            assert timeouts, f"{name} ran without a statement_timeout"
            # The server's clock starts a little late, so allow it some slack.
            assert all(0 < ms <= 21_000 for ms in timeouts), (name, timeouts)
        with count_statements(running.engine) as counter:
            await calls["UpdateTask"](None)
        assert _statement_timeouts(counter.statements, counter.parameters) == []

        # SET LOCAL: the timeout ended with its transaction; pooled connections are clean.
        async with running.engine.connect() as connection:
            value = await connection.scalar(text("SHOW statement_timeout"))
        assert value == "0"


async def test_reads_send_their_queries_and_no_transaction(pg_url: str) -> None:
    # BEGIN and ROLLBACK around a read under READ COMMITTED buy nothing: every
    # statement takes its own snapshot. Without them GetTask is one round trip.
    settings = Settings(database_url=pg_url, address="127.0.0.1:0")
    async with _running(settings) as (running, channel):
        sent = _log_sent_queries(running)
        project, task = await _project_with_task(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        reads: dict[str, Callable[[], Awaitable[Any]]] = {
            "GetTask": lambda: tasks.GetTask(
                task_service_pb2.GetTaskRequest(id=task.id), timeout=20
            ),
            "GetTask FULL": lambda: tasks.GetTask(
                task_service_pb2.GetTaskRequest(id=task.id, view=FULL), timeout=20
            ),
            "ListTasks": lambda: tasks.ListTasks(
                task_service_pb2.ListTasksRequest(project_id=project.id, view=FULL), timeout=20
            ),
            "StreamTasks": lambda: _read_stream(tasks, project.id, 20),
            "GetProject": lambda: projects.GetProject(
                project_service_pb2.GetProjectRequest(id=project.id), timeout=20
            ),
            "ListTaskEvents": lambda: tasks.ListTaskEvents(
                task_service_pb2.ListTaskEventsRequest(task_id=task.id), timeout=20
            ),
        }
        for name, read in reads.items():
            await read()  # connections open, statements prepared
            sent.clear()
            await read()
            assert sent, f"{name} sent nothing"
            assert all(query.lstrip().upper().startswith("SELECT") for query in sent), (name, sent)
            assert not any("statement_timeout" in query for query in sent), (name, sent)
        sent.clear()
        await reads["GetTask"]()
        assert len(sent) == 1, sent


async def test_create_task_is_one_statement_between_begin_and_commit(pg_url: str) -> None:
    # The reference check and the audit event ride in the task's INSERT.
    settings = Settings(database_url=pg_url, address="127.0.0.1:0")
    async with _running(settings) as (running, channel):
        sent = _log_sent_queries(running)
        project, _task = await _project_with_task(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=project.id, title="one round trip")
        )
        # No deadline: with one, a write also sets its statement_timeout (tested above).
        await tasks.CreateTask(request)  # statements prepared
        sent.clear()
        created = await tasks.CreateTask(request)
        words = [query.split()[0].rstrip(";").upper() for query in sent]
        # (SQLAlchemy's listener sees the INSERT before asyncpg sends the BEGIN it needs.)
        assert sorted(words) == ["BEGIN", "COMMIT", "WITH"], sent
        events = await tasks.ListTaskEvents(
            task_service_pb2.ListTaskEventsRequest(task_id=created.id), timeout=20
        )
        assert [event.action for event in events.events] == ["create"]


def _log_sent_queries(running: TaskServer) -> list[str]:
    """Every query the server sends from now on: SQLAlchemy's, and what asyncpg sends
    by itself (BEGIN, COMMIT, ROLLBACK); the pool must not hold connections yet."""
    sent: list[str] = []
    engine = running.engine.sync_engine
    event.listen(
        engine,
        "connect",
        lambda connection, _record: connection.driver_connection.add_query_logger(
            lambda logged: sent.append(logged.query)
        ),
    )
    event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


async def _read_stream(
    tasks: task_service_pb2_grpc.TaskServiceStub, project_id: int, timeout: float | None
) -> list[task_service_pb2.StreamTasksResponse]:
    request = task_service_pb2.StreamTasksRequest(project_id=project_id, view=FULL)
    return [response async for response in tasks.StreamTasks(request, timeout=timeout)]


# --- health -------------------------------------------------------------------------


@pytest.fixture
async def doomed_database(admin: asyncpg.Connection, postgres_url: str) -> AsyncIterator[str]:
    """An empty database of its own, which the test may make unreachable."""
    name = f"taskservice_ops_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _statuses(health: health_pb2_grpc.HealthStub) -> set[int]:
    responses = [
        await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
        for name in ALL_SERVICES
    ]
    return {response.status for response in responses}


async def test_health_follows_the_database(doomed_database: str, admin: asyncpg.Connection) -> None:
    name = _database_name(doomed_database)
    settings = Settings(
        database_url=doomed_database, address="127.0.0.1:0", health_probe_interval=0.2
    )
    async with _running(settings) as (running, channel):
        health = health_pb2_grpc.HealthStub(channel)
        assert await _statuses(health) == {SERVING}

        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )

        async def not_serving() -> bool:
            return await _statuses(health) == {NOT_SERVING}

        await _eventually(not_serving, "every service is NOT_SERVING")

        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

        async def serving() -> bool:
            return await _statuses(health) == {SERVING}

        await _eventually(serving, "every service is SERVING again")
        assert running.probe is not None
        assert running.probe.running


async def test_shutdown_stops_the_probe_for_good(pg_url: str) -> None:
    settings = Settings(database_url=pg_url, address="127.0.0.1:0", health_probe_interval=0.05)
    running = await start_server(settings)
    assert running.probe is not None
    assert running.probe.running
    await running.stop(grace=0)
    assert not running.probe.running
    for name in ALL_SERVICES:
        response = await running.health.Check(health_pb2.HealthCheckRequest(service=name), None)
        assert response.status == NOT_SERVING


# --- the process, with one worker or several -------------------------------------------


async def _refuses_new_calls(address: str) -> bool:
    """True once a call on a fresh connection is refused UNAVAILABLE (SERVER_SHUTTING_DOWN);
    False while calls still succeed; no other outcome."""
    async with grpc.aio.insecure_channel(address) as channel:
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        try:
            await projects.ListProjects(project_service_pb2.ListProjectsRequest(), timeout=TIMEOUT)
        except grpc.aio.AioRpcError as error:
            failure = read_failure(error, grpc.StatusCode.UNAVAILABLE)
            assert failure.info.reason == "SERVER_SHUTTING_DOWN", failure
            return True
    return False


def _children(parent: int) -> list[int]:
    """Pids whose parent is `parent` (from /proc; no psutil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name in parentheses may contain spaces: split after its ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return sorted(found)


def _tcp_states(port: int) -> dict[int, str]:
    """Socket inode -> TCP state (0A listen, 01 established) for local `port`."""
    states: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                states[int(fields[9])] = fields[3]
    return states


def _sockets_of(pid: int, port: int, state: str) -> int:
    """How many of `pid`'s sockets on local `port` are in TCP `state`."""
    states = _tcp_states(port)
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            count += states.get(int(target[8:-1])) == state
    return count


def _has_loaded_grpc(pid: int) -> bool:
    return "cygrpc" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_lets_the_in_flight_call_finish_then_exits_0(
    pg_url: str, admin: asyncpg.Connection, workers: int
) -> None:
    flags = ("--database-url", pg_url, "--shutdown-grace", "60", "--drain-delay", "0")
    async with service_process(*flags, port=free_port(), workers=workers) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            _, task = await _project_with_task(channel)
            async with _row_locked(pg_url, task.id) as release:
                in_flight = _update_title(channel, task.id, "finished", TIMEOUT * 2)

                async def blocked() -> bool:
                    return await _waiting_on_a_lock(admin, _database_name(pg_url))

                await _eventually(blocked, "the update waits on the row lock")
                server.send_signal(signal.SIGTERM)
                # The application refuses new calls (retryable, with details) while the
                # in-flight one waits: grpc-core keeps dispatching until it is done.
                await _eventually(
                    lambda: _refuses_new_calls(server.address), "new calls are refused"
                )
                assert not in_flight.done()
                await release()
                updated = await asyncio.wait_for(in_flight, TIMEOUT)
        assert updated.title == "finished"
        assert await server.exited() == 0, server.log


async def test_workers_share_the_port_and_all_serve(pg_url: str) -> None:
    port = free_port()
    async with service_process("--database-url", pg_url, port=port, workers=2) as server:

        async def both_listen() -> bool:
            assert server.running, "the service exited:\n" + server.log
            children = _children(server.pid)
            return len(children) == 2 and all(_sockets_of(c, port, "0A") for c in children)

        await _eventually(both_listen, "two workers listen on the port")
        workers = _children(server.pid)
        assert not _has_loaded_grpc(server.pid), "the supervisor imported grpc before forking"
        assert all(_has_loaded_grpc(worker) for worker in workers)

        # The kernel spreads new connections over both listeners: each worker answers some.
        # (A local subchannel pool per channel: grpc would otherwise share one connection.)
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(server.address, own_connection) for _ in range(24)]
        try:
            for channel in channels:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=TIMEOUT
                )
                assert response.status == SERVING
            connections = {worker: _sockets_of(worker, port, "01") for worker in workers}
        finally:
            for channel in channels:
                await channel.close()
        assert all(connections.values()), connections

        assert await server.terminate() == 0, server.log
    assert not any(Path(f"/proc/{worker}").exists() for worker in workers)
    assert server.log.count("stopped") >= 2


async def test_workers_need_an_explicit_port(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/x.db"
    args = ("serve", "--workers", "2", "--address", "127.0.0.1:0", "--database-url", database)
    code, _, stderr = await run_service(*args)
    assert code == 2, stderr
    assert "explicit port" in stderr


async def test_a_worker_that_cannot_listen_fails_the_service(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/x.db"
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody may share this port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = ("serve", "--workers", "2", "--address", address, "--database-url", database)
        code, _, stderr = await run_service(*args)
    assert code == 1, stderr
    assert f"cannot listen on {address}" in stderr


def test_each_worker_gets_its_own_metrics_port() -> None:
    settings = Settings(address="127.0.0.1:7000", workers=3, metrics_port=9100)
    check_settings(settings)
    assert [worker_settings(settings, n).metrics_port for n in range(3)] == [9100, 9101, 9102]
    assert worker_settings(Settings(address="127.0.0.1:7000", workers=2), 1).metrics_port == 0
    with pytest.raises(ConfigurationError, match="65536"):
        check_settings(Settings(address="127.0.0.1:7000", workers=3, metrics_port=65534))
