"""BatchCreateTasks (AIP-233): up to 1000 tasks in one transaction, all or nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from taskmanager.v1 import resources_pb2, task_service_pb2
from tests.conftest import create_task
from tests.rpc_errors import expect_failure
from tests.safe_writes import (
    DEADLINE,
    MISSING_ID,
    Projects,
    Tasks,
    get_task,
    list_tasks,
    new_project,
    new_request_id,
)

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def item(
    project_id: int, title: str = "", parent_index: int | None = None, **fields: Any
) -> task_service_pb2.CreateTaskRequest:
    """One CreateTaskRequest of a batch."""
    request = task_service_pb2.CreateTaskRequest(
        task=resources_pb2.Task(project_id=project_id, title=title, **fields)
    )
    if parent_index is not None:
        request.batch_parent_index = parent_index
    return request


def batch(
    requests: list[task_service_pb2.CreateTaskRequest], request_id: str = ""
) -> task_service_pb2.BatchCreateTasksRequest:
    return task_service_pb2.BatchCreateTasksRequest(requests=requests, request_id=request_id)


async def batch_create(
    tasks: Tasks, request: task_service_pb2.BatchCreateTasksRequest
) -> list[resources_pb2.Task]:
    response = await tasks.BatchCreateTasks(request, timeout=DEADLINE)
    return list(response.tasks)


def titled(project_id: int, count: int) -> list[task_service_pb2.CreateTaskRequest]:
    return [item(project_id, f"task {index:04d}") for index in range(count)]


# --- success -------------------------------------------------------------------------------


async def test_a_batch_creates_every_task_and_returns_them_in_request_order(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    requests = [
        item(project.id, "first", tags=[" a ", "b"], priority=resources_pb2.TASK_PRIORITY_HIGH),
        item(project.id, "second", assignee_id=worker.id, description="d"),
        item(project.id, "third", status=resources_pb2.TASK_STATUS_DONE),
    ]

    created = await batch_create(tasks, batch(requests))

    assert [t.title for t in created] == ["first", "second", "third"]
    assert len({t.id for t in created}) == 3
    assert list(created[0].tags) == ["a", "b"]
    assert created[1].assignee_id == worker.id
    assert created[2].status == resources_pb2.TASK_STATUS_DONE
    assert created[1].status == resources_pb2.TASK_STATUS_PENDING  # the defaults apply
    assert created[0].etag
    for task in created:
        assert await get_task(tasks, task.id) == task


async def test_a_batch_may_span_several_projects(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    other = await new_project(projects)

    created = await batch_create(tasks, batch([item(project.id, "here"), item(other.id, "there")]))

    assert [t.project_id for t in created] == [project.id, other.id]


async def test_a_batch_of_1000_is_accepted(tasks: Tasks, project: resources_pb2.Project) -> None:
    created = await batch_create(tasks, batch(titled(project.id, 1000)))

    assert [t.title for t in created] == [f"task {i:04d}" for i in range(1000)]
    assert len(await list_tasks(tasks, project.id)) == 1000


# --- size limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1001])
async def test_a_batch_of_0_or_1001_is_invalid_and_creates_nothing(
    tasks: Tasks, project: resources_pb2.Project, count: int
) -> None:
    failure = await expect_failure(batch_create(tasks, batch(titled(project.id, count))), INVALID)

    assert failure.fields == ["requests"]
    assert await list_tasks(tasks, project.id) == []


# --- all or nothing ------------------------------------------------------------------------


async def test_a_missing_assignee_in_the_8th_task_creates_nothing_and_names_index_7(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    requests = [item(project.id, f"ok {i}", assignee_id=worker.id) for i in range(10)]
    requests[7].task.assignee_id = MISSING_ID

    failure = await expect_failure(batch_create(tasks, batch(requests)), FAILED_PRECONDITION)

    assert failure.info.reason == "ASSIGNEE_NOT_FOUND"
    assert failure.info.metadata["index"] == "7"
    assert "requests[7]" in failure.message
    assert await list_tasks(tasks, project.id, show_deleted=True) == []


@pytest.mark.parametrize(
    ("bad_field", "reason"),
    [
        ({"project_id": MISSING_ID}, "PROJECT_NOT_FOUND"),
        ({"parent_task_id": MISSING_ID}, "PARENT_TASK_NOT_FOUND"),
    ],
)
async def test_any_failing_reference_rolls_back_the_whole_batch(
    tasks: Tasks, project: resources_pb2.Project, bad_field: dict[str, int], reason: str
) -> None:
    fields = {"project_id": project.id, **bad_field}
    requests = [*titled(project.id, 4), item(title="bad", **fields)]

    failure = await expect_failure(batch_create(tasks, batch(requests)), FAILED_PRECONDITION)

    assert failure.info.reason == reason
    assert failure.info.metadata["index"] == "4"
    assert await list_tasks(tasks, project.id, show_deleted=True) == []


async def test_a_failed_batch_can_be_fixed_and_sent_again(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    requests = titled(project.id, 3)
    requests[1].task.assignee_id = MISSING_ID
    await expect_failure(batch_create(tasks, batch(requests)), FAILED_PRECONDITION)

    requests[1].task.ClearField("assignee_id")
    created = await batch_create(tasks, batch(requests))

    assert {t.id for t in await list_tasks(tasks, project.id)} == {t.id for t in created}


# --- violations name the index -------------------------------------------------------------


async def test_field_violations_name_the_failing_index(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    requests = titled(project.id, 10)
    requests[7].task.title = "   "
    requests[2].task.tags.extend(["x", " x"])
    requests[9].task.priority = 42  # type: ignore[assignment]

    failure = await expect_failure(batch_create(tasks, batch(requests)), INVALID)

    assert sorted(failure.fields) == sorted(
        ["requests[2].task.tags[1]", "requests[7].task.title", "requests[9].task.priority"]
    )
    assert await list_tasks(tasks, project.id) == []


# --- batch_parent_index --------------------------------------------------------------------


async def test_batch_parent_index_creates_parent_and_children_in_one_call(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await batch_create(
        tasks,
        batch(
            [
                item(project.id, "root"),
                item(project.id, "child", parent_index=0),
                item(project.id, "grandchild", parent_index=1),
                item(project.id, "second child", parent_index=0),
            ]
        ),
    )

    root, child, grandchild, second = created
    assert not root.HasField("parent_task_id")
    assert child.parent_task_id == root.id
    assert grandchild.parent_task_id == child.id
    assert second.parent_task_id == root.id
    assert (await get_task(tasks, grandchild.id)).parent_task_id == child.id


async def test_batch_items_may_also_hang_under_existing_tasks(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    existing = await create_task(tasks, project.id)

    created = await batch_create(
        tasks, batch([item(project.id, "under existing", parent_task_id=existing.id)])
    )

    assert created[0].parent_task_id == existing.id


@pytest.mark.parametrize(("position", "parent_index"), [(1, 1), (1, 2), (0, 0), (2, -1)])
async def test_a_self_or_forward_batch_parent_index_is_invalid(
    tasks: Tasks, project: resources_pb2.Project, position: int, parent_index: int
) -> None:
    requests = titled(project.id, 3)
    requests[position].batch_parent_index = parent_index

    failure = await expect_failure(batch_create(tasks, batch(requests)), INVALID)

    assert failure.fields == [f"requests[{position}].batch_parent_index"]
    assert await list_tasks(tasks, project.id) == []


async def test_batch_parent_index_in_create_task_is_invalid(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request = item(project.id, "alone", parent_index=0)

    failure = await expect_failure(tasks.CreateTask(request, timeout=DEADLINE), INVALID)

    assert failure.fields == ["batch_parent_index"]
    assert await list_tasks(tasks, project.id) == []


async def test_a_batch_child_of_a_parent_in_another_project_rolls_back_the_batch(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    other = await new_project(projects)

    failure = await expect_failure(
        batch_create(
            tasks, batch([item(project.id, "parent"), item(other.id, "child", parent_index=0)])
        ),
        FAILED_PRECONDITION,
    )

    assert failure.info.metadata["index"] == "1"
    assert await list_tasks(tasks, project.id) == []
    assert await list_tasks(tasks, other.id) == []


# --- request_id ----------------------------------------------------------------------------


async def test_a_retried_batch_returns_the_first_response_and_creates_nothing(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request = batch(
        [item(project.id, "p"), item(project.id, "c", parent_index=0)], new_request_id()
    )

    first = await batch_create(tasks, request)
    retried = await batch_create(tasks, request)

    assert retried == first
    assert {t.id for t in await list_tasks(tasks, project.id)} == {t.id for t in first}


async def test_a_reused_batch_request_id_with_another_payload_is_already_exists(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request_id = new_request_id()
    first = await batch_create(tasks, batch(titled(project.id, 2), request_id))

    failure = await expect_failure(
        batch_create(tasks, batch(titled(project.id, 3), request_id)),
        grpc.StatusCode.ALREADY_EXISTS,
    )

    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert {t.id for t in await list_tasks(tasks, project.id)} == {t.id for t in first}


async def test_a_failed_batch_does_not_use_up_its_request_id(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    requests = titled(project.id, 2)
    requests[1].task.assignee_id = MISSING_ID
    request = batch(requests, new_request_id())

    for _ in range(2):
        failure = await expect_failure(batch_create(tasks, request), FAILED_PRECONDITION)
        assert failure.info.metadata["index"] == "1"

    assert await list_tasks(tasks, project.id) == []


async def test_request_ids_inside_the_batch_items_are_ignored(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    used = new_request_id()
    single = await tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=project.id, title="single"), request_id=used
        )
    )
    requests = titled(project.id, 2)
    requests[0].request_id = used  # already used by CreateTask: not a replay, not a conflict
    requests[1].request_id = used

    created = await batch_create(tasks, batch(requests))

    assert [t.title for t in created] == ["task 0000", "task 0001"]
    assert {t.id for t in await list_tasks(tasks, project.id)} == {
        single.id,
        *(t.id for t in created),
    }
