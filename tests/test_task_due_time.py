"""Task.due_time through the real server: stored, filtered, overdue, ordered nulls last."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import make_url

from service.runtime.server import TaskServer
from service.storage.models import Task, utc_now
from taskmanager.v1 import resources_pb2, task_service_pb2
from tests.conftest import StatementCounter, create_task
from tests.rpc_errors import expect_failure
from tests.safe_writes import (
    DEADLINE,
    Tasks,
    changed_fields,
    get_task,
    task_events,
    update_task,
    update_task_call,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FULL = resources_pb2.TASK_VIEW_FULL
DONE, CANCELLED = resources_pb2.TASK_STATUS_DONE, resources_pb2.TASK_STATUS_CANCELLED


def stamp(when: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(when)
    return value


def time_range(start: datetime | None = None, end: datetime | None = None) -> Any:
    bounds = resources_pb2.TimeRange()
    if start is not None:
        bounds.start_time.CopyFrom(stamp(start))
    if end is not None:
        bounds.end_time.CopyFrom(stamp(end))
    return bounds


async def due_task(
    tasks: Tasks, project_id: int, due: datetime | None, **fields: Any
) -> resources_pb2.Task:
    if due is not None:
        fields["due_time"] = stamp(due)
    return await create_task(tasks, project_id, **fields)


async def list_ids(tasks: Tasks, **request: Any) -> list[int]:
    request.setdefault("page_size", 1000)
    response = await tasks.ListTasks(task_service_pb2.ListTasksRequest(**request), timeout=DEADLINE)
    return [task.id for task in response.tasks]


async def walk_ids(tasks: Tasks, **request: Any) -> list[list[int]]:
    """Every page of a ListTasks request, as id lists."""
    message = task_service_pb2.ListTasksRequest(**request)
    pages: list[list[int]] = []
    while True:
        response = await tasks.ListTasks(message, timeout=DEADLINE)
        pages.append([task.id for task in response.tasks])
        if not response.next_page_token:
            return pages
        message.page_token = response.next_page_token


async def seed_due_tasks(
    server: TaskServer, project_id: int, dues: list[datetime | None]
) -> list[int]:
    """Insert tasks with these due times straight through the server's sessions."""
    now = utc_now()
    entities = [
        Task(
            project_id=project_id,
            title=f"due {index:04d}",
            due_time=due,
            create_time=now,
            update_time=now,
        )
        for index, due in enumerate(dues)
    ]
    async with server.deps.session_factory() as session:
        session.add_all(entities)
        await session.commit()
    return [entity.id for entity in entities if entity.id is not None]


# --- the field ----------------------------------------------------------------------------


async def test_due_time_is_stored_to_the_microsecond_and_shown_in_every_read(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    due = Timestamp(seconds=1_900_000_000, nanos=123_456_789)
    created = await create_task(tasks, project.id, due_time=due)
    kept = Timestamp(seconds=1_900_000_000, nanos=123_456_000)
    assert created.due_time == kept

    full = await tasks.GetTask(task_service_pb2.GetTaskRequest(id=created.id, view=FULL))
    listed = await tasks.ListTasks(task_service_pb2.ListTasksRequest(project_id=project.id))
    streamed = [
        task
        async for batch in tasks.StreamTasks(
            task_service_pb2.StreamTasksRequest(project_id=project.id)
        )
        for task in batch.tasks
    ]
    for task in (await get_task(tasks, created.id), full, *listed.tasks, *streamed):
        assert task.due_time == kept


async def test_due_time_can_be_changed_and_cleared_with_the_mask(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await due_task(tasks, project.id, utc_now())
    later = stamp(utc_now() + timedelta(days=3))

    moved = await update_task(tasks, resources_pb2.Task(id=created.id, due_time=later))
    assert moved.due_time == later
    cleared = await update_task(tasks, resources_pb2.Task(id=created.id), ["due_time"])
    assert not cleared.HasField("due_time")
    assert not (await get_task(tasks, created.id)).HasField("due_time")

    _, move, clear = await task_events(tasks, created.id)
    assert changed_fields(move)["due_time"][1] is not None
    assert changed_fields(clear)["due_time"][1] is None


async def test_invalid_due_time_is_invalid_argument(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    bad = Timestamp(seconds=-62_135_596_801)  # before year 1
    failure = await expect_failure(create_task(tasks, project.id, due_time=bad), INVALID)
    assert failure.fields == ["task.due_time"]
    created = await create_task(tasks, project.id)
    failure = await expect_failure(
        update_task_call(tasks, resources_pb2.Task(id=created.id, due_time=bad)), INVALID
    )
    assert failure.fields == ["task.due_time"]


# --- filters ------------------------------------------------------------------------------


async def test_due_time_range_includes_start_excludes_end_and_never_matches_undated(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    base = utc_now().replace(microsecond=0) + timedelta(days=10)
    early = await due_task(tasks, project.id, base - timedelta(seconds=1))
    start = await due_task(tasks, project.id, base)
    inside = await due_task(tasks, project.id, base + timedelta(hours=1))
    end = await due_task(tasks, project.id, base + timedelta(days=1))
    await due_task(tasks, project.id, None)

    window = time_range(base, base + timedelta(days=1))
    found = await list_ids(tasks, project_id=project.id, due_time=window, order_by="due_time")
    assert found == [start.id, inside.id]
    open_start = time_range(end=base)
    assert await list_ids(tasks, project_id=project.id, due_time=open_start) == [early.id]
    open_end = time_range(start=base + timedelta(days=1))
    assert await list_ids(tasks, project_id=project.id, due_time=open_end) == [end.id]


async def test_due_time_range_with_start_not_before_end_is_invalid(tasks: Tasks) -> None:
    now = utc_now()
    failure = await expect_failure(
        tasks.ListTasks(task_service_pb2.ListTasksRequest(due_time=time_range(now, now))),
        INVALID,
    )
    assert failure.fields == ["due_time"]


async def test_overdue_means_due_before_now_and_not_done_or_cancelled(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    past, future = utc_now() - timedelta(hours=1), utc_now() + timedelta(hours=1)
    late = await due_task(tasks, project.id, past)
    blocked = await due_task(tasks, project.id, past, status=resources_pb2.TASK_STATUS_BLOCKED)
    await due_task(tasks, project.id, past, status=DONE)
    await due_task(tasks, project.id, past, status=CANCELLED)
    await due_task(tasks, project.id, future)
    await due_task(tasks, project.id, None)

    expected = sorted([late.id, blocked.id])
    assert sorted(await list_ids(tasks, project_id=project.id, overdue=True)) == expected
    streamed = [
        task.id
        async for batch in tasks.StreamTasks(
            task_service_pb2.StreamTasksRequest(project_id=project.id, overdue=True, batch_size=1)
        )
        for task in batch.tasks
    ]
    assert sorted(streamed) == expected
    # Finishing a task makes it not overdue any more.
    await update_task(tasks, resources_pb2.Task(id=late.id, status=DONE))
    assert await list_ids(tasks, project_id=project.id, overdue=True) == [blocked.id]


async def test_page_token_is_bound_to_due_filters(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    for _ in range(3):
        await due_task(tasks, project.id, utc_now() - timedelta(days=1))
    first = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=project.id, overdue=True, page_size=2)
    )
    changed = task_service_pb2.ListTasksRequest(
        project_id=project.id, page_size=2, page_token=first.next_page_token
    )
    failure = await expect_failure(tasks.ListTasks(changed), INVALID)
    assert failure.info.reason == "INVALID_PAGE_TOKEN"


# --- order_by due_time --------------------------------------------------------------------


@pytest.fixture
async def dated(tasks: Tasks, project: resources_pb2.Project) -> dict[str, list[int]]:
    """A project whose tasks have due times (two share one) and some have none."""
    base = utc_now().replace(microsecond=0)
    dues = [base + timedelta(days=2), None, base, base + timedelta(days=1), None, base, None]
    ids = [(await due_task(tasks, project.id, due)).id for due in dues]
    by_due = sorted(
        (due, task_id) for due, task_id in zip(dues, ids, strict=True) if due is not None
    )
    undated = sorted(task_id for due, task_id in zip(dues, ids, strict=True) if due is None)
    return {
        "asc": [task_id for _, task_id in by_due] + undated,
        "desc": [task_id for _, task_id in reversed(by_due)] + undated[::-1],
    }


@pytest.mark.parametrize("direction", ["asc", "desc"])
async def test_order_by_due_time_puts_tasks_without_one_last_in_both_directions(
    tasks: Tasks, project: resources_pb2.Project, dated: dict[str, list[int]], direction: str
) -> None:
    order_by = "due_time" if direction == "asc" else "due_time desc"
    assert await list_ids(tasks, project_id=project.id, order_by=order_by) == dated[direction]
    for view in (resources_pb2.TASK_VIEW_BASIC, FULL):
        for size in (1, 2, 3):
            pages = await walk_ids(
                tasks, project_id=project.id, order_by=order_by, page_size=size, view=view
            )
            assert sum(pages, []) == dated[direction], (size, view)
            assert all(len(page) == size for page in pages[:-1])


async def test_order_by_due_time_walk_is_stable_while_due_times_change(
    tasks: Tasks, project: resources_pb2.Project, dated: dict[str, list[int]]
) -> None:
    """A row moved behind the walk's position is not returned twice; rows that keep their
    due time are all returned once."""
    request = task_service_pb2.ListTasksRequest(
        project_id=project.id, order_by="due_time", page_size=2
    )
    first = await tasks.ListTasks(request)
    seen = [task.id for task in first.tasks]
    # Give the first (already returned) task no due time: it moves to the undated tail.
    await update_task(tasks, resources_pb2.Task(id=seen[0]), ["due_time"])
    request.page_token = first.next_page_token
    while True:
        response = await tasks.ListTasks(request)
        seen.extend(task.id for task in response.tasks)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    assert seen.count(dated["asc"][1]) == 1
    assert set(dated["asc"]) - {dated["asc"][0]} <= set(seen)


async def test_order_by_due_time_pages_cost_one_statement_each(
    tasks: Tasks, project: resources_pb2.Project, server: TaskServer, statements: StatementCounter
) -> None:
    base = utc_now()
    dues = [base + timedelta(minutes=i) if i % 3 else None for i in range(30)]
    await seed_due_tasks(server, project.id, dues)
    for order_by in ("due_time", "due_time desc"):
        request = task_service_pb2.ListTasksRequest(
            project_id=project.id, page_size=4, order_by=order_by
        )
        counts: list[int] = []
        while True:
            statements.statements.clear()
            statements.parameters.clear()
            response = await tasks.ListTasks(request)
            counts.append(statements.count)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        assert len(counts) == 8
        assert counts == [1] * 8, counts


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # its EXPLAIN plans
async def test_order_by_due_time_reads_at_most_a_page_from_each_index_on_postgres(
    tasks: Tasks,
    project: resources_pb2.Project,
    server: TaskServer,
    statements: StatementCounter,
    database_url: str,
) -> None:
    """EXPLAIN ANALYZE of a deep page: two index range scans, each of at most a page."""
    base = utc_now()
    dues = [base + timedelta(seconds=i) if i % 2 else None for i in range(400)]
    await seed_due_tasks(server, project.id, dues)
    for order_by in ("due_time", "due_time desc"):
        request = task_service_pb2.ListTasksRequest(page_size=10, order_by=order_by)
        for _ in range(5):  # a few pages in
            request.page_token = (await tasks.ListTasks(request)).next_page_token
        statements.statements.clear()
        statements.parameters.clear()
        await tasks.ListTasks(request)
        [(sql, parameters)] = zip(statements.statements, statements.parameters, strict=True)
        plan = await explain(database_url, sql, parameters)
        scans = [node for node in walk(plan) if node.get("Relation Name") == "tasks"]
        keyset = [node for node in scans if node.get("Index Name") != "pk_tasks"]
        assert {node["Index Name"] for node in keyset} <= {
            "ix_tasks_due_time_id",
            "ix_tasks_id_without_due_time",
        }, scans
        assert "ix_tasks_due_time_id" in {node.get("Index Name") for node in keyset}
        assert all(node["Actual Rows"] <= 11 for node in keyset), keyset
        assert not [node for node in scans if node["Node Type"] == "Seq Scan"]


async def explain(database_url: str, sql: str, parameters: Any) -> dict[str, Any]:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SET enable_seqscan = off")
        await connection.execute("SET enable_bitmapscan = off")
        raw = await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *parameters)
    finally:
        await connection.close()
    plan: dict[str, Any] = json.loads(raw)[0]["Plan"]
    return plan


def walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(child for sub in node.get("Plans", []) for child in walk(sub))]


async def test_order_by_due_time_is_not_offered_to_streams(tasks: Tasks) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in tasks.StreamTasks(task_service_pb2.StreamTasksRequest(order_by="due_time")):
            pass
    assert raised.value.code() == INVALID
