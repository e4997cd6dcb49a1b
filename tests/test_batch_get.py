"""BatchGetTasks (AIP-231) through the real server: request order, all or nothing, views."""

from __future__ import annotations

import grpc
import pytest

from service.runtime.server import TaskServer
from taskmanager.v1 import resources_pb2, task_service_pb2
from tests.conftest import StatementCounter, create_task
from tests.rpc_errors import expect_failure
from tests.safe_writes import DEADLINE, MISSING_ID, Tasks, get_task
from tests.seeding import seed_tasks

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FULL = resources_pb2.TASK_VIEW_FULL


async def batch_get(tasks: Tasks, ids: list[int], view: int = 0) -> list[resources_pb2.Task]:
    response = await tasks.BatchGetTasks(
        task_service_pb2.BatchGetTasksRequest(ids=ids, view=view), timeout=DEADLINE
    )
    return list(response.tasks)


async def test_tasks_come_back_in_request_order_as_get_task_returns_them(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    made = [await create_task(tasks, project.id, assignee_id=worker.id) for _ in range(4)]
    ids = [made[2].id, made[0].id, made[3].id, made[1].id]

    found = await batch_get(tasks, ids)

    assert [task.id for task in found] == ids
    assert found == [await get_task(tasks, task_id) for task_id in ids]


async def test_full_view_matches_get_task_full(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    parent = await create_task(tasks, project.id, creator_id=worker.id, assignee_id=worker.id)
    child = await create_task(tasks, project.id, parent_task_id=parent.id)

    found = await batch_get(tasks, [child.id, parent.id], FULL)

    for task in found:
        single = await tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id, view=FULL))
        assert task == single
    assert found[1].project == project
    assert found[1].creator == worker
    assert [sub.id for sub in found[1].subtasks] == [child.id]


async def test_a_repeated_id_returns_its_task_at_each_position(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    one, two = (await create_task(tasks, project.id)).id, (await create_task(tasks, project.id)).id
    assert [task.id for task in await batch_get(tasks, [one, two, one])] == [one, two, one]


async def test_soft_deleted_tasks_are_returned_like_get_task_does(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    task = await create_task(tasks, project.id)
    await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=task.id))
    (found,) = await batch_get(tasks, [task.id])
    assert found.HasField("delete_time")


@pytest.mark.parametrize("view", [0, FULL])
async def test_any_missing_id_is_not_found_naming_every_missing_one_and_returns_nothing(
    tasks: Tasks, project: resources_pb2.Project, view: int
) -> None:
    present = await create_task(tasks, project.id)
    missing = [MISSING_ID, MISSING_ID + 7]

    failure = await expect_failure(
        tasks.BatchGetTasks(
            task_service_pb2.BatchGetTasksRequest(
                ids=[present.id, missing[0], missing[1], missing[0]], view=view
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )

    assert failure.info.reason == "TASK_NOT_FOUND"
    assert failure.info.metadata["task_ids"] == f"{missing[0]},{missing[1]}"
    assert failure.info.metadata["missing_count"] == "2"
    assert str(missing[0]) in failure.message
    assert str(missing[1]) in failure.message
    assert str(present.id) not in failure.info.metadata["task_ids"]


async def test_many_missing_ids_are_listed_up_to_ten_and_counted(tasks: Tasks) -> None:
    ids = [MISSING_ID + index for index in range(100)]
    failure = await expect_failure(
        tasks.BatchGetTasks(task_service_pb2.BatchGetTasksRequest(ids=ids)),
        grpc.StatusCode.NOT_FOUND,
    )
    # Ten ids of up to 19 digits fit the translator's 200-byte bound on a metadata value.
    assert failure.info.metadata["task_ids"].split(",") == [str(i) for i in ids[:10]]
    assert failure.info.metadata["missing_count"] == "100"
    assert "and 90 more" in failure.message


async def test_a_thousand_ids_in_one_statement_per_view(
    tasks: Tasks, project: resources_pb2.Project, server: TaskServer, statements: StatementCounter
) -> None:
    ids = await seed_tasks(server, project.id, 1000)
    wanted = ids[::-1]

    statements.statements.clear()
    basic = await batch_get(tasks, wanted)
    basic_statements = statements.count
    statements.statements.clear()
    full = await batch_get(tasks, wanted, FULL)
    full_statements = statements.count

    assert [task.id for task in basic] == [task.id for task in full] == wanted
    assert basic_statements == 1, statements.statements
    # The tasks with their relations, then the subtasks in selectinload's chunks of 500 ids.
    assert full_statements == 3, statements.statements


@pytest.mark.parametrize(
    ("ids", "view", "fields"),
    [
        ([], 0, ["ids"]),
        (list(range(1, 1002)), 0, ["ids"]),
        ([3, 0, -1], 0, ["ids[1]", "ids[2]"]),
        ([3], 7, ["view"]),
    ],
)
async def test_bad_requests_are_invalid_argument(
    tasks: Tasks, ids: list[int], view: int, fields: list[str]
) -> None:
    failure = await expect_failure(
        tasks.BatchGetTasks(task_service_pb2.BatchGetTasksRequest(ids=ids, view=view)), INVALID
    )
    assert failure.fields == fields
