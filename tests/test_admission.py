"""Admission control: one channel at any concurrency, overload refused by the application.

Through a server process: 1,000 concurrent calls on one channel all succeed (no
transport-level refusal); a flood beyond the bound and the queue is refused with
RESOURCE_EXHAUSTED, ErrorInfo and RetryInfo, and /metrics counts it; streams the client
stops reading hold no slot. The gate's own rules (FIFO, deadlines, cancels) are checked
in-process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from service.runtime.admission import AdmissionGate, admission
from service.storage.errors import ResourceExhausted, Unavailable
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
from tests.metrics_scrape import metric
from tests.rpc_errors import read_failure
from tests.seeding import seed_tasks_at

TIMEOUT = 60.0
ONE_CHANNEL_CALLS = 1000
LIMIT, QUEUE, FLOOD = 2, 5, 50


async def _eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def _project_with_task(channel: grpc.aio.Channel) -> resources_pb2.Task:
    project = await project_service_pb2_grpc.ProjectServiceStub(channel).CreateProject(
        project_service_pb2.CreateProjectRequest(
            project=resources_pb2.Project(name=unique("admission"))
        ),
        timeout=TIMEOUT,
    )
    task: resources_pb2.Task = await task_service_pb2_grpc.TaskServiceStub(channel).CreateTask(
        task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=project.id, title=unique("task"))
        ),
        timeout=TIMEOUT,
    )
    return task


@asynccontextmanager
async def _writes_blocked(database_url: str) -> AsyncIterator[None]:
    """Hold a lock that makes every task write wait (reads go on), until exit."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database or "", isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")  # the one write lock
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    locker = await asyncpg.connect(dsn, timeout=TIMEOUT)
    transaction = locker.transaction()
    await transaction.start()
    # EXCLUSIVE conflicts with UpdateTask's SELECT ... FOR UPDATE, not with plain reads.
    await locker.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        await transaction.rollback()
        await locker.close()


async def _code_of(call: Awaitable[Any]) -> grpc.StatusCode | grpc.aio.AioRpcError:
    """OK, or the failed call's error (to read its details)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    return grpc.StatusCode.OK


# --- through a server process ------------------------------------------------------------


async def test_a_thousand_concurrent_calls_on_one_channel_all_succeed(database_url: str) -> None:
    async with (
        service_process("--database-url", database_url, "--drain-delay", "0") as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        task = await _project_with_task(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.GetTaskRequest(id=task.id)
        outcomes = await asyncio.gather(
            *(_code_of(tasks.GetTask(request, timeout=TIMEOUT)) for _ in range(ONE_CHANNEL_CALLS))
        )
        failures = [o for o in outcomes if o is not grpc.StatusCode.OK]
        assert not failures, Counter(str(f) for f in failures).most_common(3)
        assert await server.terminate() == 0, server.log


async def test_flood_beyond_bound_and_queue_gets_resource_exhausted_with_retry_info(
    database_url: str,
) -> None:
    metrics_port = free_port()
    flags = ("--max-concurrent-rpcs", str(LIMIT), "--max-queued-rpcs", str(QUEUE))
    async with (
        service_process(
            "--database-url",
            database_url,
            *flags,
            "--metrics-port",
            str(metrics_port),
            "--drain-delay",
            "0",
        ) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        task = await _project_with_task(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        update = task_service_pb2.UpdateTaskRequest(
            task=resources_pb2.Task(id=task.id, title="flooded"),
            update_mask=FieldMask(paths=["title"]),
        )
        async with _writes_blocked(database_url):
            calls = [
                asyncio.ensure_future(_code_of(tasks.UpdateTask(update, timeout=TIMEOUT)))
                for _ in range(FLOOD)
            ]

            async def refused() -> bool:
                return sum(call.done() for call in calls) == FLOOD - LIMIT - QUEUE

            await _eventually(refused, "everything beyond the bound and the queue is refused")
            assert await metric(metrics_port, "taskservice_admission_executing") == LIMIT
            assert await metric(metrics_port, "taskservice_admission_queue_depth") == QUEUE
            # Health is never gated: a saturated server still answers its probes.
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        outcomes = await asyncio.gather(*calls)

        assert outcomes.count(grpc.StatusCode.OK) == LIMIT + QUEUE
        refusals = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(refusals) == FLOOD - LIMIT - QUEUE
        for error in refusals:
            failure = read_failure(error, grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert failure.info.reason == "SERVER_OVERLOADED"
            assert failure.info.metadata["cause"] == "queue_full"
            assert failure.retry_info is not None
            assert failure.retry_info.retry_delay.ToTimedelta().total_seconds() > 0
        rejected = await metric(
            metrics_port, "taskservice_admission_rejected_total", reason="queue_full"
        )
        assert rejected == FLOOD - LIMIT - QUEUE
        waited = await metric(metrics_port, "taskservice_admission_wait_seconds_count")
        assert waited == QUEUE
        assert await server.terminate() == 0, server.log
    assert "INTERNAL" not in server.log


async def _stalled_stream(address: str, project_id: int) -> grpc.aio.Channel:
    """A channel whose stream read one batch and stopped: the server blocks in flow control."""
    channel = grpc.aio.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
    call = task_service_pb2_grpc.TaskServiceStub(channel).StreamTasks(
        task_service_pb2.StreamTasksRequest(project_id=project_id, batch_size=100),
        timeout=TIMEOUT,
    )
    await call.read()
    return channel


async def test_streams_the_client_stopped_reading_hold_no_slot(database_url: str) -> None:
    metrics_port = free_port()
    flags = ("--max-concurrent-rpcs", str(LIMIT), "--metrics-port", str(metrics_port))
    async with (
        service_process("--database-url", database_url, *flags, "--drain-delay", "0") as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        task = await _project_with_task(channel)
        await seed_tasks_at(database_url, task.project_id, 1000, description="x" * 500)
        # Three times as many open streams as slots: had each kept one, the fourth would
        # never get its first batch.
        streams = [await _stalled_stream(server.address, task.project_id) for _ in range(3 * LIMIT)]
        try:

            async def all_stalled() -> bool:
                return await metric(metrics_port, "taskservice_admission_executing") == 0

            await _eventually(all_stalled, "the stalled streams hold no slot")
            waits = await metric(metrics_port, "taskservice_admission_wait_seconds_count")
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)
            for _ in range(20):
                got = await tasks.GetTask(
                    task_service_pb2.GetTaskRequest(id=task.id), timeout=TIMEOUT
                )
                assert got.id == task.id
            # None of them waited for a slot.
            assert await metric(metrics_port, "taskservice_admission_wait_seconds_count") == waits
        finally:
            for stream in streams:
                await stream.close()
        assert await server.terminate() == 0, server.log


# --- the gate's rules, in-process ----------------------------------------------------------


def _no_deadline() -> float | None:
    return None


async def test_waiters_are_admitted_first_come_first_served() -> None:
    gate = AdmissionGate(limit=1, queue_limit=10)
    assert gate.try_acquire()
    order: list[int] = []

    async def waiter(number: int) -> None:
        await gate.acquire(_no_deadline)
        order.append(number)
        gate.release(time.perf_counter())

    waiting = [asyncio.create_task(waiter(n)) for n in range(5)]
    await asyncio.sleep(0)
    assert gate.queued == 5
    gate.release(time.perf_counter())
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2, 3, 4]
    assert (gate.executing, gate.queued) == (0, 0)


async def test_a_full_queue_refuses_at_once_and_unbounded_waits_still_queue() -> None:
    gate = AdmissionGate(limit=1, queue_limit=1)
    assert gate.try_acquire()
    first = asyncio.create_task(gate.acquire(_no_deadline))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted) as raised:
        await gate.acquire(_no_deadline)
    assert raised.value.metadata == {"cause": "queue_full"}
    assert raised.value.retry_delay > 0
    # A running stream's next batch is not refused for a full queue: it waits its turn.
    second = asyncio.create_task(gate.acquire(_no_deadline, bounded=False))
    await asyncio.sleep(0)
    assert gate.queued == 2
    gate.release(time.perf_counter())
    await first
    gate.release(time.perf_counter())
    await second
    gate.release(time.perf_counter())
    assert gate.executing == 0


async def test_a_waiter_is_refused_before_its_deadline_passes() -> None:
    gate = AdmissionGate(limit=1, queue_limit=10)
    assert gate.try_acquire()
    deadline = time.monotonic() + 0.2
    with pytest.raises(ResourceExhausted) as raised:
        await gate.acquire(lambda: deadline - time.monotonic())
    assert time.monotonic() < deadline
    assert raised.value.metadata == {"cause": "deadline"}
    assert gate.queued == 0
    # A deadline shorter than the expected wait is refused without waiting.
    with pytest.raises(ResourceExhausted):
        await gate.acquire(lambda: 0.001)


async def test_a_cancelled_waiter_leaves_the_line_and_passes_on_a_slot_it_was_given() -> None:
    gate = AdmissionGate(limit=1, queue_limit=10)
    assert gate.try_acquire()
    given = asyncio.create_task(gate.acquire(_no_deadline))
    behind = asyncio.create_task(gate.acquire(_no_deadline))
    await asyncio.sleep(0)
    gate.release(time.perf_counter())  # the slot goes to `given`...
    given.cancel()  # ...which is cancelled before it runs: `behind` must get it
    await asyncio.gather(given, return_exceptions=True)
    await asyncio.wait_for(behind, TIMEOUT)
    assert (gate.executing, gate.queued) == (1, 0)


async def test_a_draining_gate_refuses_new_calls_and_reports_idle() -> None:
    gate = AdmissionGate(limit=1, queue_limit=1)
    gate.admit()
    gate.stop_accepting()
    with pytest.raises(Unavailable) as raised:
        gate.admit()
    assert raised.value.reason == "SERVER_SHUTTING_DOWN"
    idle = asyncio.create_task(gate.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()
    gate.call_done(None)
    await asyncio.wait_for(idle, TIMEOUT)


class _FakeContext:
    """What the admission layer uses of a ServicerContext."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def time_remaining(self) -> float | None:
        return None

    def finish(self) -> None:
        for callback in self.callbacks:
            callback(self)


async def test_exempt_methods_take_no_slot_even_when_none_is_free() -> None:
    gate = AdmissionGate(limit=1, queue_limit=10)
    assert gate.try_acquire()  # the only slot is taken

    async def unary(request: Any, context: Any) -> str:
        return "ran"

    async def stream(request: Any, context: Any) -> AsyncIterator[str]:
        async with gate.slot(_no_deadline):  # what a servicer's batch read does
            yield "batch"

    layer = admission(gate, exempt=("/pkg.S/Exempt", "/pkg.S/ExemptStream"))
    exempt = layer("/pkg.S/Exempt", grpc.unary_unary_rpc_method_handler(unary))
    gated = layer("/pkg.S/Gated", grpc.unary_unary_rpc_method_handler(unary))
    exempt_stream = layer("/pkg.S/ExemptStream", grpc.unary_stream_rpc_method_handler(stream))

    context = _FakeContext()
    assert await asyncio.wait_for(exempt.unary_unary(None, context), TIMEOUT) == "ran"
    assert [m async for m in exempt_stream.unary_stream(None, _FakeContext())] == ["batch"]
    waiting = asyncio.ensure_future(gated.unary_unary(None, _FakeContext()))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "a gated call ran without a slot"
    assert gate.queued == 1
    gate.release(time.perf_counter())
    assert await asyncio.wait_for(waiting, TIMEOUT) == "ran"
    assert gate.in_flight == 3  # until grpc has sent their statuses
    context.finish()
    assert gate.in_flight == 2
