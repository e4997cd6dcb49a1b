"""A rolling restart behind a real nginx fails nothing, duplicates nothing, loses nothing.

Three server processes on one PostgreSQL database behind nginx with the shipped site
config (deploy/nginx/taskservice.conf, per-call balancing); one client channel with the
published service config (protos/taskmanager/v1/service_config.json: UNAVAILABLE retried
for reads, and for creates that carry a request_id) puts mixed load on it while each
replica in turn gets SIGTERM and is started again: what clients are told to use is
enough. nginx OSS has no active health checks: a draining replica is left to refuse
calls (UNAVAILABLE, retried on another replica) and then to close, after which nginx
moves calls whose connect fails to the next replica by itself.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from service.storage import migrate
from taskmanager.v1 import resources_pb2, task_service_pb2, task_service_pb2_grpc
from tests.infra.clients import retrying_channel
from tests.infra.nginx import running_nginx
from tests.infra.processes import free_ports
from tests.infra.service_process import ServiceProcess, service_process
from tests.seeding import seed_project_at

TIMEOUT = 30.0
REPLICAS = 3
CALLERS = 12
STREAM_CALLERS = 2
STREAMED = 300


class Load:
    """What the callers did and saw."""

    def __init__(self) -> None:
        self.running = True
        self.created: dict[int, str] = {}  # acknowledged creates: id -> title
        self.calls = 0
        self.failures: list[str] = []
        self.resumed = 0


async def _caller(load: Load, tasks: task_service_pb2_grpc.TaskServiceStub, project: int) -> None:
    rng = random.Random()
    while load.running:
        kind = rng.choice(("CreateTask", "GetTask", "ListTasks"))
        try:
            if kind == "CreateTask" or not load.created:
                title = f"rolling-{uuid.uuid4()}"
                created = await tasks.CreateTask(
                    task_service_pb2.CreateTaskRequest(
                        task=resources_pb2.Task(project_id=project, title=title),
                        request_id=str(uuid.uuid4()),
                    ),
                    timeout=TIMEOUT,
                )
                load.created[created.id] = title
            elif kind == "GetTask":
                task_id = rng.choice(list(load.created))
                got = await tasks.GetTask(
                    task_service_pb2.GetTaskRequest(id=task_id), timeout=TIMEOUT
                )
                assert got.title == load.created[task_id]
            else:
                request = task_service_pb2.ListTasksRequest(project_id=project, page_size=20)
                await tasks.ListTasks(request, timeout=TIMEOUT)
        except grpc.aio.AioRpcError as error:
            load.failures.append(f"{kind}: {error.code()} {error.details()}")
        load.calls += 1
        await asyncio.sleep(0.01)


async def _streamer(load: Load, tasks: task_service_pb2_grpc.TaskServiceStub, project: int) -> None:
    """Streams the whole project again and again, resuming from the last token when a
    replica ends the stream (as clients are told to)."""
    while load.running:
        received: list[int] = []
        token = ""
        while True:
            request = task_service_pb2.StreamTasksRequest(
                project_id=project, batch_size=20, resume_token=token
            )
            try:
                async for response in tasks.StreamTasks(request, timeout=TIMEOUT):
                    received.extend(task.id for task in response.tasks)
                    token = response.resume_token
                    await asyncio.sleep(0.005)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and token:
                    load.resumed += 1
                    continue
                load.failures.append(f"StreamTasks: {error.code()} {error.details()}")
                break
            break
        load.calls += 1
        if len(received) != STREAMED or len(set(received)) != STREAMED:
            load.failures.append(
                f"StreamTasks delivered {len(received)} ({len(set(received))} distinct)"
            )


async def _replica(stack: AsyncExitStack, database_url: str, port: int) -> ServiceProcess:
    flags = ("--drain-delay", "0.5", "--shutdown-grace", str(TIMEOUT))
    return await stack.enter_async_context(
        service_process("--database-url", database_url, *flags, port=port)
    )


async def _duplicate_titles(database_url: str, project: int) -> int:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=TIMEOUT)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM (SELECT title FROM tasks WHERE project_id = $1 "
            "GROUP BY title HAVING count(*) > 1) AS duplicated",
            project,
        )
    finally:
        await connection.close()
    return count


@pytest.mark.timeout(300)
async def test_rolling_restart_behind_nginx_fails_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    written = await seed_project_at(postgres_url, f"rolling-{uuid.uuid4()}")
    streamed = await seed_project_at(postgres_url, f"streamed-{uuid.uuid4()}", STREAMED)
    ports = free_ports(REPLICAS)
    stacks = [AsyncExitStack() for _ in ports]
    replicas = list(
        await asyncio.gather(
            *(_replica(s, postgres_url, p) for s, p in zip(stacks, ports, strict=True))
        )
    )
    try:
        async with (
            running_nginx(tmp_path / "nginx", [f"127.0.0.1:{port}" for port in ports]) as nginx,
            retrying_channel(nginx.address) as channel,
        ):
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)
            load = Load()
            callers = asyncio.gather(
                *(_streamer(load, tasks, streamed) for _ in range(STREAM_CALLERS)),
                *(_caller(load, tasks, written) for _ in range(CALLERS - STREAM_CALLERS)),
            )
            refused = 0  # calls the draining replicas refused: the retry policy hid them
            for number, port in enumerate(ports):
                before = load.calls
                while load.calls < before + 50:  # the load reaches every replica
                    await asyncio.sleep(0.01)
                code = await replicas[number].terminate()
                assert code == 0, replicas[number].log
                refused += replicas[number].log.count("code=UNAVAILABLE")
                await stacks[number].aclose()
                stacks[number] = AsyncExitStack()
                replicas[number] = await _replica(stacks[number], postgres_url, port)
            before = load.calls
            while load.calls < before + 50:
                await asyncio.sleep(0.01)
            load.running = False
            await asyncio.wait_for(callers, TIMEOUT)

            assert not load.failures, (load.failures[:10], nginx.errors()[-2000:])
            assert refused, "no replica refused a call while draining: the test exercised nothing"
            for task_id, title in load.created.items():
                got = await tasks.GetTask(
                    task_service_pb2.GetTaskRequest(id=task_id), timeout=TIMEOUT
                )
                assert got.title == title
        for replica in replicas:
            assert await replica.terminate() == 0, replica.log
    finally:
        for stack in stacks:
            await stack.aclose()
    assert await _duplicate_titles(postgres_url, written) == 0
    assert load.created, "no create was acknowledged: the test exercised nothing"
