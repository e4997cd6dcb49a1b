"""Reads on a real streaming standby, with read-your-writes through consistency tokens.

One primary and one hot standby (initdb, pg_basebackup -R, pg_ctl) serve the whole
module; tests that pause the standby's replay or stop it restore it before they end.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest

from service.runtime.server import TaskServer, start_server
from service.storage import migrate
from service.storage.replicas import Replica, parse_lsn
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import count_statements, server_settings, unique, wait_until
from tests.infra.postgres_cluster import StreamingPair
from tests.rpc_errors import expect_failure
from tests.trace_callers import Caller
from tests.traced_server import traced_server

TOKEN = "x-consistency-token"
DEADLINE = 10.0
Tasks = task_service_pb2_grpc.TaskServiceStub


@pytest.fixture(scope="module")
async def replicated(streaming_pair: StreamingPair) -> AsyncIterator[str]:
    """The name of a migrated database on the pair's primary (and so on its standby)."""
    name = f"taskservice_replicas_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(streaming_pair.primary.query, f'CREATE DATABASE "{name}"')
    await asyncio.to_thread(migrate.upgrade, streaming_pair.primary.url(name))
    try:
        yield name
    finally:
        await asyncio.to_thread(
            streaming_pair.primary.query, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
        )


@dataclass
class Client:
    """Stubs of one channel to the server."""

    tasks: Tasks
    projects: project_service_pb2_grpc.ProjectServiceStub


@asynccontextmanager
async def replicated_server(
    pair: StreamingPair, name: str, **settings: Any
) -> AsyncIterator[tuple[TaskServer, Replica, Client]]:
    """A server on the primary with the standby as its read replica, and its stubs."""
    running = await start_server(
        server_settings(
            pair.primary.url(name), read_database_urls=[pair.standby.url(name)], **settings
        )
    )
    assert running.replicas is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            client = Client(Tasks(channel), project_service_pb2_grpc.ProjectServiceStub(channel))
            yield running, running.replicas.replicas[0], client
    finally:
        await running.stop(grace=0)


@asynccontextmanager
async def replay_paused(pair: StreamingPair) -> AsyncIterator[None]:
    """The standby receives WAL but replays none of it, until the block ends."""
    await asyncio.to_thread(pair.standby.query, "SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        await asyncio.to_thread(pair.standby.query, "SELECT pg_wal_replay_resume()")


async def new_project(client: Client) -> int:
    created = await client.projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name=unique("replicated")), timeout=DEADLINE
    )
    return int(created.id)


async def create_with_token(
    client: Client, project_id: int, title: str = "replicated"
) -> tuple[resources_pb2.Task, str]:
    """Create a task; it and the consistency token the write returned."""
    call = client.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=project_id, title=title)
        ),
        timeout=DEADLINE,
    )
    created = await call
    trailers = dict(await call.trailing_metadata() or ())
    return created, str(trailers[TOKEN])


def with_token(token: str) -> tuple[tuple[str, str], ...]:
    return ((TOKEN, token),)


# --- read-your-writes ----------------------------------------------------------------------


@asynccontextmanager
async def replication_busy(pair: StreamingPair, name: str) -> AsyncIterator[None]:
    """Bulk writes on the primary meanwhile, so the standby's replay trails by milliseconds
    (as under production load) and a read right after a write can miss it there."""
    connection = await asyncpg.connect(pair.primary.dsn(name))
    await connection.execute("CREATE TABLE IF NOT EXISTS filler (id int, pad text)")
    stop = asyncio.Event()

    async def fill() -> None:
        while not stop.is_set():
            await connection.execute(
                "INSERT INTO filler SELECT g, repeat('x', 500) FROM generate_series(1, 5000) g"
            )
            await connection.execute("TRUNCATE filler")

    filling = asyncio.create_task(fill())
    try:
        yield
    finally:
        stop.set()
        await filling
        await connection.execute("DROP TABLE filler")
        await connection.close()


async def test_300_create_then_read_pairs_with_the_token_find_every_task(
    streaming_pair: StreamingPair, replicated: str
) -> None:
    async with (
        replicated_server(streaming_pair, replicated) as (_, replica, client),
        replication_busy(streaming_pair, replicated),
    ):
        tasks = client.tasks
        project_id = await new_project(client)
        await wait_until(lambda: replica.eligible(1.0))
        outcomes: Counter[str] = Counter()
        gate = asyncio.Semaphore(30)

        async def create_then_read(number: int) -> None:
            async with gate:
                created, token = await create_with_token(client, project_id, f"pair {number}")
                try:
                    read = await tasks.GetTask(
                        task_service_pb2.GetTaskRequest(id=created.id),
                        metadata=with_token(token),
                        timeout=DEADLINE,
                    )
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] += 1
                    return
                outcomes["OK" if read.title == created.title else "WRONG"] += 1

        with count_statements(replica.engine) as on_replica:
            await asyncio.gather(*(create_then_read(number) for number in range(300)))

    assert outcomes == Counter({"OK": 300})
    # The standby served most of them (it replays in milliseconds): not all went to the primary.
    assert on_replica.count >= 150


async def test_writes_return_a_consistency_token_beside_the_request_id(
    streaming_pair: StreamingPair, replicated: str
) -> None:
    async with replicated_server(streaming_pair, replicated) as (_, _, client):
        tasks = client.tasks
        project_id = await new_project(client)
        call = tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(project_id=project_id, title="t")
            ),
            metadata=(("x-request-id", "req-123"),),
        )
        await call
        trailers = dict(await call.trailing_metadata() or ())
        primary_now = parse_lsn(
            await asyncio.to_thread(streaming_pair.primary.query, "SELECT pg_current_wal_lsn()")
        )
    assert trailers["x-request-id"] == "req-123"
    assert 0 < parse_lsn(str(trailers[TOKEN])) <= primary_now


async def test_a_malformed_consistency_token_is_invalid_argument(
    streaming_pair: StreamingPair, replicated: str
) -> None:
    async with replicated_server(streaming_pair, replicated) as (_, _, client):
        tasks = client.tasks
        read = tasks.GetTask(
            task_service_pb2.GetTaskRequest(id=1), metadata=with_token("not/a-token")
        )
        failure = await expect_failure(read, grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.info.reason == "INVALID_CONSISTENCY_TOKEN"
    assert failure.fields == [TOKEN]


# --- a lagging standby ------------------------------------------------------------------------


async def test_with_replay_paused_token_reads_fall_back_to_the_primary_within_the_deadline(
    streaming_pair: StreamingPair, replicated: str
) -> None:
    # replica_wait is longer than the call's deadline: the deadline bounds the wait.
    async with replicated_server(streaming_pair, replicated, replica_wait=30.0) as (
        server,
        replica,
        client,
    ):
        tasks = client.tasks
        project_id = await new_project(client)
        await wait_until(lambda: replica.eligible(1.0))
        async with replay_paused(streaming_pair):
            created, token = await create_with_token(client, project_id)
            with (
                count_statements(replica.engine) as on_replica,
                count_statements(server.engine) as on_primary,
            ):
                started = time.monotonic()
                read = await tasks.GetTask(
                    task_service_pb2.GetTaskRequest(id=created.id),
                    metadata=with_token(token),
                    timeout=2.0,
                )
                waited = time.monotonic() - started
    assert read.id == created.id
    assert on_replica.count == 0
    assert on_primary.count == 1
    assert 0.5 <= waited < 2.0  # waited for the standby (half the deadline), then the primary


async def test_with_replay_paused_reads_skip_the_standby_once_it_lags_past_the_limit(
    streaming_pair: StreamingPair, replicated: str
) -> None:
    async with replicated_server(
        streaming_pair, replicated, max_replica_lag=0.5, replica_check_interval=0.05
    ) as (_, replica, client):
        tasks = client.tasks
        project_id = await new_project(client)
        await wait_until(lambda: replica.eligible(0.5))
        async with replay_paused(streaming_pair):
            created, _ = await create_with_token(client, project_id)
            await wait_until(lambda: not replica.eligible(0.5), timeout=10)
            assert replica.healthy  # reachable, only too far behind
            with count_statements(replica.engine) as on_replica:
                reads = [
                    await tasks.GetTask(
                        task_service_pb2.GetTaskRequest(id=created.id), timeout=DEADLINE
                    )
                    for _ in range(20)
                ]
        assert [read.id for read in reads] == [created.id] * 20  # no NOT_FOUND: the primary
        assert on_replica.count == 0
        # Replaying again, it catches up and serves token-less reads once more.
        await wait_until(lambda: replica.eligible(0.5), timeout=10)
        with count_statements(replica.engine) as on_replica:
            await tasks.GetTask(task_service_pb2.GetTaskRequest(id=created.id), timeout=DEADLINE)
        assert on_replica.count == 1


async def test_later_pages_are_never_read_where_the_first_page_is_not_replayed(
    streaming_pair: StreamingPair, replicated: str
) -> None:
    # A generous lag limit keeps the paused standby eligible for reads without a position.
    async with replicated_server(
        streaming_pair, replicated, max_replica_lag=60.0, replica_wait=0.05
    ) as (_, replica, client):
        tasks = client.tasks
        project_id = await new_project(client)
        ids = [(await create_with_token(client, project_id, f"t{n}"))[0].id for n in range(25)]
        await wait_until(lambda: replica.eligible(60.0))
        async with replay_paused(streaming_pair):
            _, token = await create_with_token(client, await new_project(client))
            # Page 1 must see the write: the primary serves it, its token carries the position.
            first = await tasks.ListTasks(
                task_service_pb2.ListTasksRequest(project_id=project_id, page_size=10),
                metadata=with_token(token),
                timeout=DEADLINE,
            )
            batch = await anext(
                aiter(
                    tasks.StreamTasks(
                        task_service_pb2.StreamTasksRequest(project_id=project_id, batch_size=10),
                        metadata=with_token(token),
                        timeout=DEADLINE,
                    )
                )
            )
            with count_statements(replica.engine) as on_replica:
                walked = [task.id for task in first.tasks]
                page_token = first.next_page_token
                while page_token:  # no consistency token sent: only the page token's position
                    page = await tasks.ListTasks(
                        task_service_pb2.ListTasksRequest(
                            project_id=project_id, page_size=10, page_token=page_token
                        ),
                        timeout=DEADLINE,
                    )
                    walked.extend(task.id for task in page.tasks)
                    page_token = page.next_page_token
                resumed = [
                    task.id
                    async for response in tasks.StreamTasks(
                        task_service_pb2.StreamTasksRequest(
                            project_id=project_id, batch_size=10, resume_token=batch.resume_token
                        ),
                        timeout=DEADLINE,
                    )
                    for task in response.tasks
                ]
            assert on_replica.count == 0
            # The control: a walk without a position is served by the (eligible) standby.
            with count_statements(replica.engine) as on_replica:
                await tasks.ListTasks(
                    task_service_pb2.ListTasksRequest(project_id=project_id, page_size=10),
                    timeout=DEADLINE,
                )
            assert on_replica.count == 1
    assert sorted(walked) == sorted(ids)
    assert [task.id for task in batch.tasks] + resumed == sorted(ids)


# --- a standby that goes away -------------------------------------------------------------------


async def test_reads_keep_working_on_the_primary_when_the_standby_stops(
    streaming_pair: StreamingPair, replicated: str
) -> None:
    async with replicated_server(streaming_pair, replicated) as (_, replica, client):
        tasks = client.tasks
        project_id = await new_project(client)
        ids = sorted([(await create_with_token(client, project_id))[0].id for _ in range(30)])
        await wait_until(lambda: replica.eligible(1.0) and replica.position > 0)
        outcomes: Counter[str] = Counter()
        wrong: list[str] = []
        stop = asyncio.Event()
        rng = random.Random(7)  # noqa: S311 - a workload, not a secret

        async def client() -> None:
            while not stop.is_set():
                try:
                    if rng.random() < 0.5:
                        task_id = rng.choice(ids)
                        read = await tasks.GetTask(
                            task_service_pb2.GetTaskRequest(id=task_id), timeout=DEADLINE
                        )
                        seen = [read.id] if read.id == task_id else []
                        expected = [task_id]
                    else:
                        request = task_service_pb2.StreamTasksRequest(
                            project_id=project_id, batch_size=7
                        )
                        seen = sorted(
                            [
                                task.id
                                async for response in tasks.StreamTasks(request, timeout=DEADLINE)
                                for task in response.tasks
                            ]
                        )
                        expected = ids
                    outcomes["OK"] += 1
                    if seen != expected:
                        wrong.append(f"read {seen}, expected {expected}")
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] += 1

        clients = [asyncio.create_task(client()) for _ in range(8)]
        try:
            async with asyncio.timeout(60):
                while outcomes["OK"] < 100:
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(streaming_pair.standby.stop, "fast")
                served = outcomes["OK"]
                while outcomes["OK"] < served + 200:
                    await asyncio.sleep(0.01)
            assert not replica.healthy
        finally:
            stop.set()
            await asyncio.gather(*clients)
            await asyncio.to_thread(streaming_pair.standby.start)
            await asyncio.to_thread(streaming_pair.wait_streaming)
        # Back: a check finds it healthy again, and it serves reads once more.
        await wait_until(lambda: replica.eligible(1.0), timeout=20)
    assert set(outcomes) == {"OK"}, outcomes
    assert wrong == []


# --- writes never go to a standby -----------------------------------------------------------------


async def test_a_write_reaching_a_standby_is_unavailable_not_internal(
    streaming_pair: StreamingPair, replicated: str
) -> None:
    # Pointed straight at the standby (a misconfiguration, or a failover's first moments).
    running = await start_server(server_settings(streaming_pair.standby.url(replicated)))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            projects = project_service_pb2_grpc.ProjectServiceStub(channel)
            write = projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name=unique("standby")),
                timeout=DEADLINE,
            )
            failure = await expect_failure(write, grpc.StatusCode.UNAVAILABLE)
            listed = await projects.ListProjects(project_service_pb2.ListProjectsRequest())
    finally:
        await running.stop(grace=0)
    assert failure.info.reason == "DATABASE_UNAVAILABLE"
    assert listed is not None  # reads work there


# --- tracing ---------------------------------------------------------------------------------


async def test_a_traced_read_served_by_the_standby_names_the_standby_in_its_statement_span(
    streaming_pair: StreamingPair, replicated: str
) -> None:
    async with traced_server(
        streaming_pair.primary.url(replicated),
        read_database_urls=[streaming_pair.standby.url(replicated)],
    ) as traced:
        assert traced.server.replicas is not None
        [replica] = traced.server.replicas.replicas
        call = traced.projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=unique("traced-replica")),
            timeout=DEADLINE,
        )
        created = await call
        token = str(dict(await call.trailing_metadata() or ())[TOKEN])
        await wait_until(lambda: replica.eligible(1.0))
        caller = Caller.new()
        with count_statements(replica.engine) as on_replica:
            await traced.projects.GetProject(
                project_service_pb2.GetProjectRequest(id=created.id),
                metadata=caller.metadata(**{TOKEN: token}),
                timeout=DEADLINE,
            )
        assert on_replica.count == 1
        _, [statement] = await traced.call_spans(caller)
    assert statement.attributes["server.port"] == streaming_pair.standby.port
    assert statement.attributes["db.query.text"] == on_replica.statements[0]
