"""Rolling restarts fail nothing: SIGTERM under load, through a server process, many times.

What a caller may see (the definition the test asserts, for every call of every run):
- a unary call sent before SIGTERM: OK (it completes normally, within shutdown_grace);
- a unary call sent after SIGTERM: OK, or refused before it started, which a retrying
  client retries elsewhere: UNAVAILABLE with ErrorInfo SERVER_SHUTTING_DOWN (the
  application refused it), or UNAVAILABLE from the transport once the server closed
  (connection refused, GOAWAY before the stream started). Never CANCELLED, never
  anything else;
- a stream: OK, or UNAVAILABLE SERVER_SHUTTING_DOWN after at least one complete batch,
  whose resume token continues it elsewhere;
- nothing refused was written: the rows of a run's project are exactly its
  acknowledged creates;
- the process (the supervisor with --workers) exits 0.

A caller stops at its first UNAVAILABLE (a real one would go to another replica).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from service.storage import migrate
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import unique
from tests.infra.processes import free_port
from tests.infra.service_process import service_process
from tests.rpc_errors import DETAILS_KEY, read_failure
from tests.seeding import seed_project_at

TIMEOUT = 30.0
RUNS = 20
CONCURRENT_RUNS = 4  # runs overlap: most of a run is a process starting or exiting
CALLERS = 32
STREAM_CALLERS = 4
# Long enough that every call sent before SIGTERM has reached its handler by the time
# the server refuses new ones, even on a test machine busy with four servers starting
# and stopping at once (a deploy uses seconds: balancers need them).
DRAIN_DELAY = "2.0"
THINK_S = 0.1  # a unary caller's pause between calls
STREAMED = 200  # tasks each stream reads, BATCH at a time
BATCH = 10
# Connections the callers spread over, so every worker of --workers serves some.
CHANNELS = 4
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# Few connections (each costs a process CPU to open and close), and so an admission
# bound of 4: most calls wait in the gate's queue, which must drain too.
SMALL_POOL = ("--pool-size", "2", "--max-overflow", "2")


@dataclass
class Run:
    """What the callers of one run saw."""

    sigterm_sent: bool = False
    in_flight_at_sigterm: int = 0
    in_flight: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    created: int = 0


def _refused_before_start(error: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE that a retry policy retries, for a call no handler ran."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    if DETAILS_KEY in dict(error.trailing_metadata() or ()):
        return read_failure(error, error.code()).info.reason == "SERVER_SHUTTING_DOWN"
    return True  # from the transport: the server had closed; no handler ran


async def _unary_caller(run: Run, channel: grpc.aio.Channel, project_id: int, task_id: int) -> None:
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    rng = random.Random()
    while True:
        kind = rng.choice(("GetTask", "CreateTask", "ListTasks"))
        if kind == "GetTask":
            call = tasks.GetTask(task_service_pb2.GetTaskRequest(id=task_id), timeout=TIMEOUT)
        elif kind == "ListTasks":
            request = task_service_pb2.ListTasksRequest(project_id=project_id, page_size=20)
            call = tasks.ListTasks(request, timeout=TIMEOUT)
        else:
            create = task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(project_id=project_id, title=unique("drain")),
                request_id=str(uuid.uuid4()),
            )
            call = tasks.CreateTask(create, timeout=TIMEOUT)
        sent_before = not run.sigterm_sent
        sent_at = time.monotonic()
        run.in_flight += 1
        try:
            await call
        except grpc.aio.AioRpcError as error:
            if sent_before or not _refused_before_start(error):
                when = "before" if sent_before else "after"
                run.failures.append(
                    f"{kind} sent {when} SIGTERM, failed {time.monotonic() - sent_at:.2f} s "
                    f"later: {error.code()} {error.details()}"
                )
            run.outcomes[f"{kind} {error.code().name}"] += 1
            return
        finally:
            run.in_flight -= 1
        run.outcomes[f"{kind} OK"] += 1
        run.created += kind == "CreateTask"
        await asyncio.sleep(THINK_S)


async def _stream_caller(run: Run, channel: grpc.aio.Channel, project_id: int) -> None:
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    while True:
        request = task_service_pb2.StreamTasksRequest(project_id=project_id, batch_size=BATCH)
        batches = 0
        run.in_flight += 1
        try:
            async for _ in tasks.StreamTasks(request, timeout=TIMEOUT):
                batches += 1
                await asyncio.sleep(0.005)  # a reader that takes its time
        except grpc.aio.AioRpcError as error:
            cut_with_token = batches > 0 and read_failure_reason(error) == "SERVER_SHUTTING_DOWN"
            if not (cut_with_token or (batches == 0 and _refused_before_start(error))):
                run.failures.append(f"StreamTasks after {batches} batches: {error.code()}")
            run.outcomes[f"StreamTasks {error.code().name}"] += 1
            return
        finally:
            run.in_flight -= 1
        if batches != STREAMED // BATCH:
            run.failures.append(f"StreamTasks ended OK after {batches} batches")
        run.outcomes["StreamTasks OK"] += 1


def read_failure_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason of an UNAVAILABLE that carries one."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    if DETAILS_KEY not in dict(error.trailing_metadata() or ()):
        return None
    return read_failure(error, error.code()).info.reason


async def _rows_of(database_url: str, project_id: int) -> int:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=TIMEOUT)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM tasks WHERE project_id = $1", project_id
        )
    finally:
        await connection.close()
    return count


async def _sigterm_run(database_url: str, workers: int, streamed_project: int) -> Run:
    """Start a server, put CALLERS on it, SIGTERM it mid-load, collect what callers saw."""
    run = Run()
    port = free_port() if workers > 1 else 0
    flags = ("--drain-delay", DRAIN_DELAY, "--shutdown-grace", str(TIMEOUT), *SMALL_POOL)
    async with service_process(
        "--database-url", database_url, *flags, port=port, workers=workers
    ) as server:
        channels = [
            grpc.aio.insecure_channel(server.address, OWN_CONNECTION) for _ in range(CHANNELS)
        ]
        try:
            projects = project_service_pb2_grpc.ProjectServiceStub(channels[0])
            project = await projects.CreateProject(
                project_service_pb2.CreateProjectRequest(
                    project=resources_pb2.Project(name=unique("drain"))
                ),
                timeout=TIMEOUT,
            )
            first = await task_service_pb2_grpc.TaskServiceStub(channels[0]).CreateTask(
                task_service_pb2.CreateTaskRequest(
                    task=resources_pb2.Task(project_id=project.id, title="first")
                ),
                timeout=TIMEOUT,
            )
            callers = [
                _stream_caller(run, channels[n % CHANNELS], streamed_project)
                if n < STREAM_CALLERS
                else _unary_caller(run, channels[n % CHANNELS], project.id, first.id)
                for n in range(CALLERS)
            ]
            load = asyncio.gather(*callers)
            # Let the load build up (every caller busy), then SIGTERM at a random moment.
            while sum(run.outcomes.values()) < CALLERS:
                await asyncio.sleep(0.01)
            await asyncio.sleep(random.uniform(0, 0.1))
            run.sigterm_sent = True
            run.in_flight_at_sigterm = run.in_flight
            code = await server.terminate()
            await asyncio.wait_for(load, TIMEOUT)
        finally:
            for channel in channels:
                await channel.close()
    if code != 0:
        run.failures.append(f"exit code {code}:\n{server.log}")
    rows = await _rows_of(database_url, project.id)
    if rows != run.created + 1:
        run.failures.append(f"{rows - 1} tasks written, {run.created} creates acknowledged")
    return run


@pytest.fixture(scope="module")
async def streamed_project(postgres_url: str) -> int:
    """A project with STREAMED tasks for the stream callers (they only read it)."""
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    return await seed_project_at(postgres_url, unique("streamed"), STREAMED)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_under_load_fails_no_call(
    postgres_url: str, streamed_project: int, workers: int
) -> None:
    limit = asyncio.Semaphore(CONCURRENT_RUNS)

    async def one_run() -> Run:
        async with limit:
            return await _sigterm_run(postgres_url, workers, streamed_project)

    runs = await asyncio.gather(*(one_run() for _ in range(RUNS)))

    failures = [failure for run in runs for failure in run.failures]
    assert not failures, failures[:10]
    seen = sum((run.outcomes for run in runs), Counter())
    # The test exercised what it claims: calls in flight at every SIGTERM, and refusals.
    assert all(run.in_flight_at_sigterm for run in runs), [r.in_flight_at_sigterm for r in runs]
    assert any(key.endswith("UNAVAILABLE") for key in seen), seen
    assert not any(key.endswith("CANCELLED") for key in seen), seen
