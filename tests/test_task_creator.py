"""Task.creator_id through the real server: set on create, checked, immutable, filterable."""

from __future__ import annotations

import grpc
import pytest

from taskmanager.v1 import resources_pb2, task_service_pb2, worker_service_pb2
from tests.conftest import create_task
from tests.rpc_errors import expect_failure
from tests.safe_writes import (
    DEADLINE,
    MISSING_ID,
    Tasks,
    Workers,
    actor,
    changed_fields,
    get_task,
    new_worker,
    stored_events,
    task_events,
    update_task,
    update_task_call,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FULL = resources_pb2.TASK_VIEW_FULL


async def list_ids(tasks: Tasks, **request: object) -> list[int]:
    response = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(page_size=1000, order_by="create_time", **request),
        timeout=DEADLINE,
    )
    return [task.id for task in response.tasks]


async def stream_ids(tasks: Tasks, **request: object) -> list[int]:
    return [
        task.id
        async for batch in tasks.StreamTasks(
            task_service_pb2.StreamTasksRequest(batch_size=2, **request), timeout=DEADLINE
        )
        for task in batch.tasks
    ]


async def test_creator_id_is_stored_and_shown_in_every_read(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id, creator_id=worker.id)
    assert created.creator_id == worker.id

    basic = await get_task(tasks, created.id)
    full = await tasks.GetTask(task_service_pb2.GetTaskRequest(id=created.id, view=FULL))
    listed = await tasks.ListTasks(task_service_pb2.ListTasksRequest(project_id=project.id))
    listed_full = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=project.id, view=FULL)
    )
    streamed = [
        task
        async for batch in tasks.StreamTasks(
            task_service_pb2.StreamTasksRequest(project_id=project.id)
        )
        for task in batch.tasks
    ]
    for task in (basic, full, *listed.tasks, *listed_full.tasks, *streamed):
        assert task.HasField("creator_id")
        assert task.creator_id == worker.id


async def test_task_without_creator_has_creator_id_unset(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    assert not created.HasField("creator_id")
    assert not (await get_task(tasks, created.id)).HasField("creator_id")


@pytest.mark.parametrize("bad", [0, -4])
async def test_creator_id_must_be_a_positive_id(
    tasks: Tasks, project: resources_pb2.Project, bad: int
) -> None:
    failure = await expect_failure(create_task(tasks, project.id, creator_id=bad), INVALID)
    assert failure.fields == ["task.creator_id"]


async def test_creator_that_does_not_exist_is_failed_precondition_and_creates_nothing(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    failure = await expect_failure(
        create_task(tasks, project.id, creator_id=MISSING_ID),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert failure.info.reason == "CREATOR_NOT_FOUND"
    assert failure.info.metadata["creator_id"] == str(MISSING_ID)
    assert await list_ids(tasks, project_id=project.id) == []


async def test_batch_create_checks_each_creator(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    def item(creator_id: int) -> task_service_pb2.CreateTaskRequest:
        return task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=project.id, title="t", creator_id=creator_id)
        )

    failure = await expect_failure(
        tasks.BatchCreateTasks(
            task_service_pb2.BatchCreateTasksRequest(requests=[item(worker.id), item(MISSING_ID)])
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert failure.info.reason == "CREATOR_NOT_FOUND"
    assert failure.info.metadata["index"] == "1"
    created = await tasks.BatchCreateTasks(
        task_service_pb2.BatchCreateTasksRequest(requests=[item(worker.id), item(worker.id)])
    )
    assert [task.creator_id for task in created.tasks] == [worker.id, worker.id]


async def test_changing_the_creator_is_invalid_argument(
    tasks: Tasks, workers: Workers, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    other = await new_worker(workers)
    created = await create_task(tasks, project.id, creator_id=worker.id)

    for task, paths in [
        (resources_pb2.Task(id=created.id, creator_id=other.id), ["creator_id"]),
        (resources_pb2.Task(id=created.id), ["creator_id"]),  # clearing it is a change too
        (resources_pb2.Task(id=created.id, title="x", creator_id=other.id), None),
    ]:
        failure = await expect_failure(update_task_call(tasks, task, paths), INVALID)
        assert failure.fields == ["task.creator_id"]
        assert failure.bad_request is not None
        assert failure.bad_request.field_violations[0].reason == "IMMUTABLE_FIELD"
    assert (await get_task(tasks, created.id)) == created


async def test_sending_the_same_creator_back_is_accepted(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id, creator_id=worker.id)
    resent = resources_pb2.Task()
    resent.CopyFrom(created)
    resent.title = "renamed"
    updated = await update_task(tasks, resent)  # no mask: every field set, creator included
    assert (updated.title, updated.creator_id) == ("renamed", worker.id)
    updated = await update_task(tasks, updated, ["*"])
    assert updated.creator_id == worker.id


async def test_a_task_without_creator_cannot_get_one_later(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id)
    failure = await expect_failure(
        update_task_call(tasks, resources_pb2.Task(id=created.id, creator_id=worker.id)), INVALID
    )
    assert failure.fields == ["task.creator_id"]


async def test_creator_id_filter_in_list_and_stream(
    tasks: Tasks, workers: Workers, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    other = await new_worker(workers)
    mine = [(await create_task(tasks, project.id, creator_id=worker.id)).id for _ in range(3)]
    await create_task(tasks, project.id, creator_id=other.id)
    await create_task(tasks, project.id, assignee_id=worker.id)  # assigned, not created by

    assert await list_ids(tasks, project_id=project.id, creator_id=worker.id) == mine
    assert await list_ids(tasks, creator_id=worker.id) == mine
    streamed = await stream_ids(tasks, project_id=project.id, creator_id=worker.id)
    assert sorted(streamed) == mine


async def test_creator_id_filter_must_be_a_positive_id(tasks: Tasks) -> None:
    failure = await expect_failure(
        tasks.ListTasks(task_service_pb2.ListTasksRequest(creator_id=0)), INVALID
    )
    assert failure.fields == ["creator_id"]


async def test_page_token_is_bound_to_the_creator_filter(
    tasks: Tasks, workers: Workers, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    other = await new_worker(workers)
    for _ in range(3):
        await create_task(tasks, project.id, creator_id=worker.id)
    first = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=project.id, creator_id=worker.id, page_size=2)
    )
    assert first.next_page_token
    failure = await expect_failure(
        tasks.ListTasks(
            task_service_pb2.ListTasksRequest(
                project_id=project.id,
                creator_id=other.id,
                page_size=2,
                page_token=first.next_page_token,
            )
        ),
        INVALID,
    )
    assert failure.info.reason == "INVALID_PAGE_TOKEN"


async def test_the_creator_is_audited_on_create(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id, creator_id=worker.id)
    (event,) = await task_events(tasks, created.id)
    assert changed_fields(event)["creator_id"] == (None, worker.id)


async def test_deleting_the_creator_clears_creator_id_audited_with_a_new_etag(
    tasks: Tasks, workers: Workers, project: resources_pb2.Project, server: object
) -> None:
    creator = await new_worker(workers)
    created = await create_task(tasks, project.id, creator_id=creator.id, assignee_id=creator.id)

    await workers.DeleteWorker(
        worker_service_pb2.DeleteWorkerRequest(id=creator.id), metadata=actor("hr")
    )

    after = await get_task(tasks, created.id)
    assert not after.HasField("creator_id")
    assert not after.HasField("assignee_id")
    assert after.etag != created.etag
    _, cleared = await task_events(tasks, created.id)
    assert (cleared.action, cleared.actor) == ("update", "hr")
    assert changed_fields(cleared) == {
        "assignee_id": (creator.id, None),
        "creator_id": (creator.id, None),
    }
    assert [e.action for e in await stored_events(server, "worker", creator.id)][-1] == "delete"  # type: ignore[arg-type]
