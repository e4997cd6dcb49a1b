"""Behind a real transaction-pooling PgBouncer: many processes share a few server
connections with no errors and no wrong results, and a failing pooler is UNAVAILABLE.

The main API tests also run through PgBouncer (the `pgbouncer` backend, conftest.py);
these are the pooler's own concerns: load from several processes, the pooler's
failures, and what server connections are left holding.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy import text

from service.runtime.server import TaskServer, start_server
from service.storage import migrate
from service.storage.engines import create_engine
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import _create_database, drop_database, server_settings, unique
from tests.infra.pgbouncer import PgBouncer, start_pgbouncer
from tests.infra.processes import free_port
from tests.infra.service_process import ServiceProcess, service_process
from tests.rpc_errors import expect_failure

SERVER_PROCESSES = 6
SHARED_SERVER_CONNECTIONS = 10
SEEDED_TASKS = 240
LOAD_CALLS = 1200  # RPCs across all processes (bounded: CI has 2 cores)
LOAD_SECONDS = 30.0  # ... or until this much time passed
CLIENTS = 12
DEADLINE = 30.0


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[tuple[str, str]]:
    """(direct URL, name) of a migrated database of this module's own."""
    url, name = await _create_database("test_pgbouncer")
    await asyncio.to_thread(migrate.upgrade, url)
    try:
        yield url, name
    finally:
        await drop_database(name)


@pytest.fixture(scope="module")
def shared_pool() -> Iterator[PgBouncer]:
    """PgBouncer with ten server connections for all the processes of the load test."""
    bouncer = start_pgbouncer(pool_size=SHARED_SERVER_CONNECTIONS, max_client_conn=500)
    try:
        yield bouncer
    finally:
        bouncer.remove()


@asynccontextmanager
async def pooled_server(
    bouncer: PgBouncer, name: str, **settings: Any
) -> AsyncIterator[TaskServer]:
    """An in-process server on database `name` through `bouncer`, pooler mode on."""
    running = await start_server(
        server_settings(bouncer.url(name), database_pooler="transaction", **settings)
    )
    try:
        yield running
    finally:
        await running.stop(grace=0)


@asynccontextmanager
async def stubs_of(address: str) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield Stubs(
            task_service_pb2_grpc.TaskServiceStub(channel),
            project_service_pb2_grpc.ProjectServiceStub(channel),
        )


@dataclass
class Stubs:
    tasks: task_service_pb2_grpc.TaskServiceStub
    projects: project_service_pb2_grpc.ProjectServiceStub


async def _new_project(stubs: Stubs) -> int:
    created = await stubs.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name=unique("pooled")), timeout=DEADLINE
    )
    return int(created.id)


async def _seed(stubs: Stubs, project_id: int, count: int) -> dict[int, str]:
    """`count` tasks in `project_id`, made in batches; id -> title."""
    titles: dict[int, str] = {}
    for start in range(0, count, 80):
        request = task_service_pb2.BatchCreateTasksRequest(
            requests=[
                task_service_pb2.CreateTaskRequest(
                    task=resources_pb2.Task(project_id=project_id, title=f"seeded {number}")
                )
                for number in range(start, min(start + 80, count))
            ]
        )
        response = await stubs.tasks.BatchCreateTasks(request, timeout=DEADLINE)
        titles.update({task.id: task.title for task in response.tasks})
    return titles


# --- many processes, one small pool ----------------------------------------------------


@dataclass
class LoadOutcome:
    """What the load's calls returned: counts per status, and every wrong result."""

    calls: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


class PooledLoad:
    """Mixed calls over several processes, each result checked against what is known."""

    def __init__(
        self, fleet: list[Stubs], project_id: int, seeded: dict[int, str], scratch: int
    ) -> None:
        self.fleet = fleet
        self.project_id = project_id  # holds the seeded tasks only
        self.seeded = seeded
        self.scratch = scratch  # the project the load's creates go to
        self.outcome = LoadOutcome()
        self.rng = random.Random(20261207)  # noqa: S311 - a workload, not a secret

    def stubs(self) -> Stubs:
        return self.rng.choice(self.fleet)

    async def run(self, clients: int, calls: int, seconds: float) -> LoadOutcome:
        ends = time.monotonic() + seconds
        operations: list[Callable[[], Awaitable[None]]] = [
            self.get_seeded,
            self.get_seeded,
            self.walk_pages,
            self.stream_all,
            self.create_then_read_elsewhere,
            self.update_with_etag,
        ]

        async def client() -> None:
            while self.outcome.total < calls and time.monotonic() < ends:
                operation = self.rng.choice(operations)
                try:
                    await operation()
                except grpc.aio.AioRpcError as error:
                    self.outcome.calls[error.code().name] += 1
                    self.outcome.errors.append(
                        f"{operation.__name__}: {error.code().name} {error.details()}"
                    )

        await asyncio.gather(*(client() for _ in range(clients)))
        return self.outcome

    def ok(self, count: int = 1) -> None:
        self.outcome.calls["OK"] += count

    async def get_seeded(self) -> None:
        task_id = self.rng.choice(list(self.seeded))
        task = await self.stubs().tasks.GetTask(
            task_service_pb2.GetTaskRequest(id=task_id), timeout=DEADLINE
        )
        self.ok()
        if (task.id, task.title) != (task_id, self.seeded[task_id]):
            self.outcome.wrong.append(f"GetTask {task_id} returned {task.id} {task.title!r}")

    async def walk_pages(self) -> None:
        seen: list[int] = []
        token = ""
        page_size = self.rng.choice((17, 50, 101))
        while True:
            stubs = self.stubs()  # every page from another process
            page = await stubs.tasks.ListTasks(
                task_service_pb2.ListTasksRequest(
                    project_id=self.project_id, page_size=page_size, page_token=token
                ),
                timeout=DEADLINE,
            )
            self.ok()
            seen.extend(task.id for task in page.tasks)
            token = page.next_page_token
            if not token:
                break
        if sorted(seen) != sorted(self.seeded) or len(seen) != len(set(seen)):
            self.outcome.wrong.append(
                f"ListTasks walk of {page_size}: {len(seen)} rows, {len(set(seen))} distinct"
            )

    async def stream_all(self) -> None:
        request = task_service_pb2.StreamTasksRequest(
            project_id=self.project_id, batch_size=self.rng.choice((7, 60, 500))
        )
        seen = [
            task.id
            async for response in self.stubs().tasks.StreamTasks(request, timeout=DEADLINE)
            for task in response.tasks
        ]
        self.ok()
        if sorted(seen) != sorted(self.seeded):
            self.outcome.wrong.append(f"StreamTasks: {len(seen)} rows, {len(set(seen))} distinct")

    async def create_then_read_elsewhere(self) -> None:
        title = unique("load")
        created = await self.stubs().tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(project_id=self.scratch, title=title)
            ),
            timeout=DEADLINE,
        )
        read = await self.stubs().tasks.GetTask(
            task_service_pb2.GetTaskRequest(id=created.id), timeout=DEADLINE
        )
        self.ok(2)
        if read.title != title:
            self.outcome.wrong.append(f"task {created.id}: created {title!r}, read {read.title!r}")

    async def update_with_etag(self) -> None:
        title = unique("renamed")
        created = await self.stubs().tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(project_id=self.scratch, title="to rename")
            ),
            timeout=DEADLINE,
        )
        updated = await self.stubs().tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(
                task=resources_pb2.Task(id=created.id, title=title, etag=created.etag),
                update_mask={"paths": ["title"]},
            ),
            timeout=DEADLINE,
        )
        self.ok(2)
        if updated.title != title or updated.etag == created.etag:
            self.outcome.wrong.append(f"task {created.id}: update returned {updated}")


@dataclass
class PoolWatch:
    """The most client and server connections PgBouncer had for one database."""

    clients: int = 0
    servers: int = 0


async def _watch_pools(bouncer: PgBouncer, database: str, watch: PoolWatch) -> None:
    # SHOW POOLS columns: database|user|cl_active|cl_waiting|cl_active_cancel_req|
    # cl_waiting_cancel_req|sv_active|sv_active_cancel|sv_being_canceled|sv_idle|sv_used|
    # sv_tested|sv_login|maxwait|maxwait_us|pool_mode
    while True:
        for line in (await asyncio.to_thread(bouncer.admin, "SHOW POOLS")).splitlines():
            fields = line.split("|")
            if fields[0] == database:
                counts = [int(value) for value in fields[2:13]]
                watch.clients = max(watch.clients, sum(counts[0:4]))
                watch.servers = max(watch.servers, sum(counts[4:11]))
        await asyncio.sleep(0.2)


async def test_six_server_processes_share_ten_server_connections_with_no_errors(
    shared_pool: PgBouncer, database: tuple[str, str]
) -> None:
    url = shared_pool.url(database[1])
    async with AsyncExitStack() as stack:
        fleet_processes: list[ServiceProcess] = list(
            await asyncio.gather(
                *(
                    stack.enter_async_context(
                        service_process(
                            *("--database-url", url, "--database-pooler", "transaction"),
                            *("--pool-size", "4", "--max-overflow", "4"),
                        )
                    )
                    for _ in range(SERVER_PROCESSES)
                )
            )
        )
        fleet = [
            await stack.enter_async_context(stubs_of(process.address))
            for process in fleet_processes
        ]
        project_id, scratch = await _new_project(fleet[0]), await _new_project(fleet[1])
        seeded = await _seed(fleet[2], project_id, SEEDED_TASKS)

        watch = PoolWatch()
        watcher = asyncio.create_task(_watch_pools(shared_pool, database[1], watch))
        try:
            outcome = await PooledLoad(fleet, project_id, seeded, scratch).run(
                CLIENTS, LOAD_CALLS, LOAD_SECONDS
            )
        finally:
            watcher.cancel()

    assert outcome.errors == []
    assert outcome.wrong == []
    assert outcome.calls["OK"] >= 300, outcome.calls  # the load really ran
    # Many more clients than server connections: they were shared, never exceeded.
    assert watch.servers <= SHARED_SERVER_CONNECTIONS
    assert watch.clients > SHARED_SERVER_CONNECTIONS


# --- the pooler's failures are UNAVAILABLE -------------------------------------------------


@pytest.fixture
def own_pool() -> Iterator[PgBouncer]:
    """A PgBouncer of this test's own, which it may kill, pause or restart."""
    bouncer = start_pgbouncer(pool_size=2, query_wait_timeout=2)
    try:
        yield bouncer
    finally:
        bouncer.remove()


async def test_killed_pooler_gives_unavailable_then_recovers_when_it_is_back(
    own_pool: PgBouncer, database: tuple[str, str]
) -> None:
    async with (
        pooled_server(own_pool, database[1]) as server,
        stubs_of(f"127.0.0.1:{server.port}") as stubs,
    ):
        project_id = await _new_project(stubs)
        task = await stubs.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(project_id=project_id, title="survivor")
            )
        )
        outcomes: Counter[grpc.StatusCode] = Counter()
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    await stubs.tasks.GetTask(
                        task_service_pb2.GetTaskRequest(id=task.id), timeout=10
                    )
                    outcomes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code()] += 1
                    await asyncio.sleep(0.01)

        clients = [asyncio.create_task(client()) for _ in range(8)]
        async with asyncio.timeout(60):
            while outcomes[grpc.StatusCode.OK] < 100:
                await asyncio.sleep(0.01)
            own_pool.kill()
            while outcomes[grpc.StatusCode.UNAVAILABLE] < 20:
                await asyncio.sleep(0.01)
            own_pool.start()  # same port
            served = outcomes[grpc.StatusCode.OK]
            while outcomes[grpc.StatusCode.OK] < served + 100:
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*clients)

    assert set(outcomes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes


async def test_pooler_without_its_database_gives_unavailable(database: tuple[str, str]) -> None:
    # PgBouncer keeps a client waiting for a server connection, retrying the login, until
    # query_wait_timeout: then the client gets an error, which must be UNAVAILABLE.
    nothing_there = free_port()
    bouncer = start_pgbouncer(server_port=nothing_there, pool_size=2, query_wait_timeout=2)
    try:
        async with (
            pooled_server(bouncer, database[1]) as server,
            stubs_of(f"127.0.0.1:{server.port}") as stubs,
        ):
            read = stubs.tasks.GetTask(task_service_pb2.GetTaskRequest(id=1), timeout=DEADLINE)
            failure = await expect_failure(read, grpc.StatusCode.UNAVAILABLE)
            assert failure.info.reason == "DATABASE_UNAVAILABLE"
            write = stubs.projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name=unique("nowhere")),
                timeout=DEADLINE,
            )
            failure = await expect_failure(write, grpc.StatusCode.UNAVAILABLE)
            assert failure.info.reason == "DATABASE_UNAVAILABLE"
    finally:
        bouncer.remove()


async def test_a_paused_pooler_past_query_wait_timeout_gives_unavailable(
    own_pool: PgBouncer, database: tuple[str, str]
) -> None:
    async with (
        pooled_server(own_pool, database[1]) as server,
        stubs_of(f"127.0.0.1:{server.port}") as stubs,
    ):
        project_id = await _new_project(stubs)
        await asyncio.to_thread(own_pool.admin, f'PAUSE "{database[1]}"')
        try:
            read = stubs.projects.GetProject(
                project_service_pb2.GetProjectRequest(id=project_id), timeout=DEADLINE
            )
            failure = await expect_failure(read, grpc.StatusCode.UNAVAILABLE)
            assert failure.info.reason == "DATABASE_UNAVAILABLE"
        finally:
            await asyncio.to_thread(own_pool.admin, f'RESUME "{database[1]}"')
        project = await stubs.projects.GetProject(
            project_service_pb2.GetProjectRequest(id=project_id), timeout=DEADLINE
        )
        assert project.id == project_id


# --- nothing is left on the shared server connections ---------------------------------------


async def _server_connection_state(bouncer: PgBouncer, name: str) -> tuple[str, int]:
    """(statement_timeout, named prepared statements) of the one server connection."""
    connection = await asyncpg.connect(
        f"postgresql://postgres@127.0.0.1:{bouncer.port}/{name}", statement_cache_size=0
    )
    try:
        timeout = await connection.fetchval("SHOW statement_timeout")
        prepared = await connection.fetchval("SELECT count(*) FROM pg_prepared_statements")
    finally:
        await connection.close()
    return str(timeout), int(prepared)


@pytest.mark.parametrize(("pooler", "leaves_statements"), [("transaction", False), ("none", True)])
async def test_pooled_calls_leave_no_session_state_on_server_connections(
    database: tuple[str, str], pooler: str, leaves_statements: bool
) -> None:
    # One server connection: every statement of every call runs on it, so whatever a
    # call leaves there, the next client gets.
    bouncer = start_pgbouncer(pool_size=1)
    try:
        settings = server_settings(bouncer.url(database[1]), database_pooler=pooler, pool_size=1)
        running = await start_server(settings)
        try:
            async with stubs_of(f"127.0.0.1:{running.port}") as stubs:
                project_id = await _new_project(stubs)  # a deadline: SET LOCAL statement_timeout
                for _ in range(3):
                    task = await stubs.tasks.CreateTask(
                        task_service_pb2.CreateTaskRequest(
                            task=resources_pb2.Task(project_id=project_id, title="state")
                        ),
                        timeout=DEADLINE,
                    )
                    await stubs.tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id))
                    await stubs.tasks.ListTasks(
                        task_service_pb2.ListTasksRequest(project_id=project_id)
                    )
        finally:
            await running.stop(grace=0)
        timeout, prepared = await _server_connection_state(bouncer, database[1])
    finally:
        bouncer.remove()
    assert timeout == "0"  # the deadline's timeout ended with its transaction
    # Named statements stay on a server connection after their client moved on: the
    # pooler setting sends none (without it, asyncpg names every statement it caches).
    assert (prepared > 0) is leaves_statements


async def test_migrations_run_through_the_pooler(shared_pool: PgBouncer) -> None:
    url, name = await _create_database("test_pooled_migrate")
    try:
        await asyncio.to_thread(migrate.upgrade, shared_pool.url(name), pooled=True)
        connection = await asyncpg.connect(make_dsn(url))
        try:
            tables = await connection.fetchval(
                "SELECT count(*) FROM pg_tables WHERE tablename IN ('tasks', 'audit_events')"
            )
        finally:
            await connection.close()
        assert tables == 2
    finally:
        await drop_database(name)


def make_dsn(url: str) -> str:
    """asyncpg DSN of a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def test_pooled_statements_are_cached_unnamed_and_parsed_with_each_execution(
    shared_pool: PgBouncer, database: tuple[str, str]
) -> None:
    # The mechanism behind database_pooler=transaction: SQLAlchemy keeps its prepared
    # statement objects (no describe round trip once cached), asyncpg names none of them
    # and sends Parse with every Bind (one round trip, on whichever server connection).
    engine = create_engine(
        server_settings(shared_pool.url(database[1]), database_pooler="transaction")
    )
    statement = text("SELECT CAST(:value AS integer) + 1")
    try:
        async with engine.connect() as connection:
            for value in range(5):
                assert (await connection.execute(statement, {"value": value})).scalar() == value + 1
            raw = await connection.get_raw_connection()
            cached = list(raw.dbapi_connection._prepared_statement_cache.values())  # type: ignore[union-attr]
    finally:
        await engine.dispose()
    states = [prepared._state for prepared, _, _ in cached]
    assert states  # cached on the client: no Parse/Describe round trip before each execution
    assert all(state.name == "" for state in states)  # nothing named on the server
    assert not any(state.prepared for state in states)  # so asyncpg re-parses it every time
