"""No client can take the server down: cancels and passed deadlines mid-stream and mid-call.

The server runs as a separate process, so a crash (a segfault in cygrpc used to follow a
stream cancelled while gRPC flow control held it) is seen as a crash.
"""

from __future__ import annotations

import asyncio
import random

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import unique
from tests.infra.service_process import ServiceProcess, service_process
from tests.seeding import seed_tasks_at

TIMEOUT = 30.0
SEEDED = 3000
BATCH = 100
# A stream window that never grows: the server blocks in flow control after a few batches.
NO_WINDOW_GROWTH = [("grpc.http2.bdp_probe", 0)]
STALL_S = 1.5  # how long the client sits on its first batch before it gives up
STALLED_STREAMS = 3  # of each kind (cancelled, deadline passed) per backend
SHORT_CALLS = 40  # of each kind per backend
ENDED = {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}


async def _seed(server: ServiceProcess, database_url: str) -> int:
    """A project with SEEDED tasks (big enough for the stream to outgrow its window)."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        project = await project_service_pb2_grpc.ProjectServiceStub(channel).CreateProject(
            project_service_pb2.CreateProjectRequest(
                project=resources_pb2.Project(name=unique("crash"))
            ),
            timeout=TIMEOUT,
        )
    await seed_tasks_at(database_url, project.id, SEEDED, description="x" * 200)
    project_id: int = project.id
    return project_id


async def _stalled_stream(address: str, project_id: int, *, cancel: bool) -> None:
    """Read one batch, sit on the stream while the server is blocked in flow control,
    then cancel it or let its deadline pass."""
    async with grpc.aio.insecure_channel(address, options=NO_WINDOW_GROWTH) as channel:
        call = task_service_pb2_grpc.TaskServiceStub(channel).StreamTasks(
            task_service_pb2.StreamTasksRequest(project_id=project_id, batch_size=BATCH),
            timeout=None if cancel else 1.0,
        )
        first = await call.read()
        assert len(first.tasks) == BATCH
        await asyncio.sleep(STALL_S)
        if cancel:
            call.cancel()
        code = await call.code()
    assert code == (grpc.StatusCode.CANCELLED if cancel else grpc.StatusCode.DEADLINE_EXCEEDED)


async def _short_calls(address: str, project_id: int) -> set[grpc.StatusCode]:
    """Unary reads and writes and streams that a deadline or a cancel cuts at random points."""
    rng = random.Random(project_id)
    list_full = task_service_pb2.ListTasksRequest(
        project_id=project_id, page_size=1000, view=resources_pb2.TASK_VIEW_FULL
    )
    codes: set[grpc.StatusCode] = set()
    async with grpc.aio.insecure_channel(address) as channel:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)

        def batch_create() -> task_service_pb2.BatchCreateTasksRequest:
            return task_service_pb2.BatchCreateTasksRequest(
                requests=[
                    task_service_pb2.CreateTaskRequest(
                        task=resources_pb2.Task(project_id=project_id, title=unique("cut"))
                    )
                    for _ in range(50)
                ]
            )

        async def with_deadline(number: int) -> None:
            timeout = rng.uniform(0.001, 0.1)
            if number % 3 == 0:
                call = tasks.BatchCreateTasks(batch_create(), timeout=timeout)
            elif number % 3 == 1:
                call = tasks.ListTasks(list_full, timeout=timeout)
            else:
                call = tasks.StreamTasks(
                    task_service_pb2.StreamTasksRequest(project_id=project_id, batch_size=BATCH),
                    timeout=timeout,
                )
            codes.add(await call.code())

        async def cancelled(number: int) -> None:
            call = (
                tasks.ListTasks(list_full)
                if number % 2
                else tasks.BatchCreateTasks(batch_create(), timeout=TIMEOUT)
            )
            await asyncio.sleep(rng.uniform(0, 0.05))
            call.cancel()
            codes.add(await call.code())

        await asyncio.gather(
            *(with_deadline(n) for n in range(SHORT_CALLS)),
            *(cancelled(n) for n in range(SHORT_CALLS)),
        )
    return codes


async def _answers(server: ServiceProcess) -> None:
    assert server.running, "the server died:\n" + server.log
    async with grpc.aio.insecure_channel(server.address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        listed = await task_service_pb2_grpc.TaskServiceStub(channel).ListTasks(
            task_service_pb2.ListTasksRequest(page_size=1), timeout=TIMEOUT
        )
        assert len(listed.tasks) == 1


async def test_cancels_and_passed_deadlines_leave_the_server_process_up(
    database_url: str,
) -> None:
    async with service_process("--database-url", database_url, "--drain-delay", "0") as server:
        project_id = await _seed(server, database_url)

        for _ in range(2):
            outcomes = await asyncio.gather(
                *(
                    _stalled_stream(server.address, project_id, cancel=cancel)
                    for cancel in (True, False)
                    for _ in range(STALLED_STREAMS)
                ),
                return_exceptions=True,
            )
            await _answers(server)  # first: a dead server explains any failure below
            assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes

        codes = await _short_calls(server.address, project_id)
        await _answers(server)
        assert codes <= ENDED, codes
        assert grpc.StatusCode.DEADLINE_EXCEEDED in codes
        assert grpc.StatusCode.CANCELLED in codes

        assert await server.terminate() == 0, server.log
    assert "Segmentation fault" not in server.log
    assert "Fatal Python error" not in server.log
