"""A rolling restart behind a real nginx fails nothing, duplicates nothing, loses nothing.

Three server processes on one PostgreSQL database behind nginx (grpc_pass, per-call
balancing); one client channel with a retry policy for UNAVAILABLE (reads, and creates
that carry a request_id) puts mixed load on it while each replica in turn gets SIGTERM
and is started again. nginx OSS has no active health checks: a draining replica is
left to refuse calls (UNAVAILABLE, retried on another replica) and then to close, after
which nginx moves calls whose connect fails to the next replica by itself.
"""

from __future__ import annotations

import asyncio
import json
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
from tests.infra.nginx_rolling import nginx_grpc_proxy
from tests.seeding import seed_project_at
from tests.server_process import ServerProcess, free_port, server_process

TIMEOUT = 30.0
REPLICAS = 3
CALLERS = 12
STREAM_CALLERS = 2
STREAMED = 300
# Clients retry UNAVAILABLE where a retry cannot do harm: reads, and creates whose
# request_id makes a second attempt return the first one's result.
RETRIED = ("GetTask", "ListTasks", "StreamTasks", "CreateTask")
SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "taskmanager.v1.TaskService", "method": m} for m in RETRIED],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
]


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


async def _replica(stack: AsyncExitStack, database_url: str, port: int) -> ServerProcess:
    flags = ("--drain-delay", "0.5", "--shutdown-grace", str(TIMEOUT))
    return await stack.enter_async_context(
        server_process(database_url, *flags, address=f"127.0.0.1:{port}")
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
    ports = [free_port() for _ in range(REPLICAS)]
    stacks = [AsyncExitStack() for _ in ports]
    replicas = list(
        await asyncio.gather(
            *(_replica(s, postgres_url, p) for s, p in zip(stacks, ports, strict=True))
        )
    )
    try:
        async with (
            nginx_grpc_proxy(tmp_path / "nginx", free_port(), ports) as nginx,
            grpc.aio.insecure_channel(nginx.address, CHANNEL_OPTIONS) as channel,
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

            assert not load.failures, (load.failures[:10], nginx.error_log()[-2000:])
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
