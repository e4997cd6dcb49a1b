"""StreamTasks: whole result sets in keyset batches, resumable, cancellable, shutdown-safe."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from service.runtime.server import TaskServer, start_server
from taskmanager.v1 import resources_pb2, task_service_pb2, task_service_pb2_grpc
from tests.conftest import create_task, server_settings, wait_until
from tests.rpc_errors import expect_failure, read_failure
from tests.seeding import seed_tasks

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def stream_request(project_id: int, **fields: object) -> task_service_pb2.StreamTasksRequest:
    return task_service_pb2.StreamTasksRequest(project_id=project_id, **fields)  # type: ignore[arg-type]


async def read_all(tasks, request) -> list[task_service_pb2.StreamTasksResponse]:
    return [response async for response in tasks.StreamTasks(request)]


def stream_queries(statements: list[str]) -> int:
    """Batch queries of a stream: the only task SELECTs ordered by create_time."""
    return sum(1 for s in statements if "FROM tasks" in s and "ORDER BY tasks.create_time" in s)


async def test_stream_delivers_every_task_in_batches_in_create_order(tasks, project, server):
    ids = await seed_tasks(server, project.id, 23)
    responses = await read_all(tasks, stream_request(project.id, batch_size=5))
    assert [len(r.tasks) for r in responses] == [5, 5, 5, 5, 3]
    assert [t.id for r in responses for t in r.tasks] == ids
    assert all(r.resume_token for r in responses)


async def test_stream_batch_size_defaults_to_500_and_is_clamped_to_5000(tasks, project, server):
    await seed_tasks(server, project.id, 5001)
    default = await read_all(tasks, stream_request(project.id))
    assert [len(r.tasks) for r in default][:2] == [500, 500]
    clamped = await read_all(tasks, stream_request(project.id, batch_size=100_000))
    assert [len(r.tasks) for r in clamped] == [5000, 1]


async def test_negative_batch_size_is_invalid(tasks, project):
    failure = await expect_failure(
        read_all(tasks, stream_request(project.id, batch_size=-1)), INVALID
    )
    assert failure.fields == ["batch_size"]


async def test_stream_of_no_matching_tasks_ends_without_messages(tasks, project):
    assert await read_all(tasks, stream_request(project.id)) == []


async def test_stream_orders_only_by_immutable_keys(tasks, project):
    failure = await expect_failure(
        read_all(tasks, stream_request(project.id, order_by="priority")), INVALID
    )
    assert failure.fields == ["order_by"]
    assert "create_time" in failure.bad_request.field_violations[0].description


async def test_stream_by_id_descending(tasks, project, server):
    ids = await seed_tasks(server, project.id, 7)
    responses = await read_all(tasks, stream_request(project.id, order_by="id desc", batch_size=3))
    assert [t.id for r in responses for t in r.tasks] == sorted(ids, reverse=True)


async def test_resumed_stream_delivers_exactly_the_rest(tasks, project, server):
    ids = await seed_tasks(server, project.id, 30)
    call = tasks.StreamTasks(stream_request(project.id, batch_size=4))
    received: list[int] = []
    token = ""
    async for response in call:
        received.extend(t.id for t in response.tasks)
        token = response.resume_token
        if len(received) == 8:
            call.cancel()  # the stream "breaks" after two batches
            break
    resumed = await read_all(tasks, stream_request(project.id, batch_size=7, resume_token=token))
    received.extend(t.id for r in resumed for t in r.tasks)
    assert received == ids


@pytest.mark.parametrize("change", [{"title_contains": "x"}, {"show_deleted": True}])
async def test_resume_token_rejected_when_filter_changes(tasks, project, server, change):
    await seed_tasks(server, project.id, 6)
    first = await read_all(tasks, stream_request(project.id, batch_size=2))
    changed = stream_request(project.id, batch_size=2, **change)
    changed.resume_token = first[0].resume_token
    failure = await expect_failure(read_all(tasks, changed), INVALID)
    assert failure.fields == ["resume_token"]


async def test_tasks_updated_during_the_stream_are_neither_skipped_nor_repeated(
    tasks, project, server
):
    ids = await seed_tasks(server, project.id, 40)
    received: list[int] = []
    async for response in tasks.StreamTasks(stream_request(project.id, batch_size=5)):
        received.extend(t.id for t in response.tasks)
        if len(received) == 5:  # touch rows behind and ahead of the stream's position
            for task_id in (ids[0], ids[20], ids[39]):
                await tasks.UpdateTask(
                    task_service_pb2.UpdateTaskRequest(
                        task=resources_pb2.Task(id=task_id, title="changed"),
                        update_mask={"paths": ["title"]},
                    )
                )
    assert received == ids


async def test_full_view_in_stream_uses_constant_statements_per_batch(
    tasks, project, worker, server, statements
):
    parents = [await create_task(tasks, project.id, assignee_id=worker.id) for _ in range(12)]
    for parent in parents:
        await create_task(tasks, project.id, parent_task_id=parent.id)
    request = stream_request(
        project.id, top_level_only=True, view=resources_pb2.TASK_VIEW_FULL, batch_size=2
    )
    statements.statements.clear()
    small = await read_all(tasks, request)
    small_count = statements.count
    request.batch_size = 12
    statements.statements.clear()
    large = await read_all(tasks, request)
    # 6 batches of 2 vs 1 batch of 12: statements scale with batches, not with tasks.
    assert small_count == 6 * statements.count
    assert all(t.assignee.id == worker.id and len(t.subtasks) == 1 for t in large[0].tasks)
    assert len(small) == 6


async def test_cancelled_stream_runs_no_further_queries(tasks, project, server, statements):
    description = "x" * 4000  # big messages fill flow-control windows quickly
    await seed_tasks(server, project.id, 400, description=description)
    call = tasks.StreamTasks(stream_request(project.id, batch_size=5))
    first = await call.read()
    assert len(first.tasks) == 5
    call.cancel()
    await wait_until(lambda: server.deps.open_streams == 0)
    batches_queried = stream_queries(statements.statements)
    assert batches_queried < 400 // 5, "the server read the whole stream despite the cancel"
    # The abandoned batch gave its connection back (rolled back), however the cancel
    # fell: a leaked transaction would hold locks (SQLite: the whole database).
    await wait_until(lambda: server.engine.pool.checkedout() == 0)
    # Nothing keeps querying once the handler is gone (a later RPC gives it a chance to),
    # and writers are not blocked by the cancelled reader.
    await tasks.GetTask(task_service_pb2.GetTaskRequest(id=first.tasks[0].id))
    await tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=project.id, title="after")
        )
    )
    assert stream_queries(statements.statements) == batches_queried


async def test_stream_past_its_deadline_stops_the_server_work(tasks, project, server):
    await seed_tasks(server, project.id, 400, description="y" * 4000)
    call = tasks.StreamTasks(stream_request(project.id, batch_size=5), timeout=1.0)
    await call.read()  # then read no more: the deadline passes while the server waits
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: server.deps.open_streams == 0)
    await wait_until(lambda: server.engine.pool.checkedout() == 0)


@pytest.fixture
async def own_server(database_url: str):
    """A second server on the same database that a test may shut down."""
    running = await start_server(server_settings(database_url))
    yield running
    await running.stop(grace=0)


async def test_stream_ends_unavailable_on_shutdown_and_resumes_elsewhere(
    tasks, project, server, own_server: TaskServer
):
    ids = await seed_tasks(server, project.id, 50)
    received: list[int] = []
    token = ""
    stopping: list[asyncio.Task[None]] = []

    async def consume(call) -> None:
        nonlocal token
        async for response in call:
            received.extend(t.id for t in response.tasks)
            token = response.resume_token
            if not stopping:  # shut the server down after the first batch
                stopping.append(asyncio.create_task(own_server.stop(grace=10)))
                await wait_until(own_server.deps.shutting_down.is_set)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{own_server.port}") as channel:
        call = task_service_pb2_grpc.TaskServiceStub(channel).StreamTasks(
            stream_request(project.id, batch_size=5)
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await consume(call)
        await stopping[0]
    failure = read_failure(raised.value, grpc.StatusCode.UNAVAILABLE)
    assert failure.info.reason == "SERVER_SHUTTING_DOWN"
    assert len(received) % 5 == 0, "the stream ends after a complete batch"
    assert len(received) < len(ids)
    rest = await read_all(tasks, stream_request(project.id, batch_size=5, resume_token=token))
    assert received + [t.id for r in rest for t in r.tasks] == ids
