"""The audit trail: every successful mutation, and nothing else, leaves events."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from service.runtime.server import TaskServer
from taskmanager.v1 import (
    project_service_pb2,
    resources_pb2,
    task_service_pb2,
    worker_service_pb2,
)
from tests.conftest import create_task, unique
from tests.rpc_errors import expect_failure
from tests.safe_writes import (
    DEADLINE,
    MISSING_ID,
    Projects,
    Tasks,
    Workers,
    actor,
    changed_fields,
    delete_task,
    last_event_id,
    new_project,
    new_request_id,
    new_worker,
    stored_events,
    task_events,
    undelete_task,
    update_project_call,
    update_task,
    update_task_call,
    update_worker_call,
)

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _micros_now() -> int:
    """Now, in nanoseconds rounded down to the microsecond (the stored precision)."""
    return time.time_ns() // 1000 * 1000


async def _create_as(
    tasks: Tasks, who: str | None, project_id: int, **fields: Any
) -> resources_pb2.Task:
    fields.setdefault("title", unique("task"))
    created: resources_pb2.Task = await tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=project_id, **fields)
        ),
        timeout=DEADLINE,
        metadata=actor(who) if who is not None else None,
    )
    return created


# --- what an event holds -------------------------------------------------------------------


async def test_create_task_records_a_create_event_with_the_new_values(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    before = _micros_now()
    created = await _create_as(tasks, "alice", project.id, title="audited", tags=["x", "y"])
    after = time.time_ns()

    (event,) = await task_events(tasks, created.id)

    assert (event.entity_type, event.entity_id, event.action) == ("task", created.id, "create")
    assert event.actor == "alice"
    assert event.id > 0
    assert before <= event.event_time.ToNanoseconds() <= after
    changes = changed_fields(event)
    assert changes["title"] == (None, "audited")
    assert changes["project_id"] == (None, project.id)
    assert changes["tags"] == (None, ["x", "y"])


@pytest.mark.parametrize("metadata", [None, "", "   "])
async def test_the_actor_defaults_to_anonymous(
    tasks: Tasks, project: resources_pb2.Project, metadata: str | None
) -> None:
    created = await _create_as(tasks, metadata, project.id)

    (event,) = await task_events(tasks, created.id)

    assert event.actor == "anonymous"


async def test_update_records_only_the_changed_fields_with_old_and_new_values(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(
        tasks, project.id, title="old", description="same", tags=["a"], assignee_id=worker.id
    )

    updated = await update_task(
        tasks,
        resources_pb2.Task(id=created.id, title="new", description="same", tags=["a", "b"]),
        ["title", "description", "tags", "assignee_id"],
        metadata=actor("bob"),
    )

    create, update = await task_events(tasks, created.id)
    assert (update.action, update.actor, update.entity_id) == ("update", "bob", created.id)
    assert changed_fields(update) == {
        "title": ("old", "new"),
        "tags": (["a"], ["a", "b"]),
        "assignee_id": (worker.id, None),
    }
    assert update.event_time.ToNanoseconds() >= updated.update_time.ToNanoseconds()
    assert update.id > create.id


async def test_delete_and_undelete_record_their_actions(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    await tasks.DeleteTask(
        task_service_pb2.DeleteTaskRequest(id=created.id), metadata=actor("carol")
    )
    await tasks.UndeleteTask(
        task_service_pb2.UndeleteTaskRequest(id=created.id), metadata=actor("dave")
    )

    _, deleted, undeleted = await task_events(tasks, created.id)
    assert (deleted.action, deleted.actor) == ("delete", "carol")
    assert (undeleted.action, undeleted.actor) == ("undelete", "dave")
    old, new = changed_fields(deleted)["delete_time"]
    assert old is None
    assert new
    assert changed_fields(undeleted)["delete_time"] == (new, None)


async def test_a_forced_delete_and_its_undelete_record_an_event_per_task_of_the_subtree(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    root = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=root.id)
    grandchild = await create_task(tasks, project.id, parent_task_id=child.id)

    await delete_task(tasks, root.id, force=True)
    await undelete_task(tasks, root.id)

    for task in (root, child, grandchild):
        actions = [event.action for event in await task_events(tasks, task.id)]
        assert actions == ["create", "delete", "undelete"], task.id


async def test_a_batch_records_a_create_event_per_task(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    response = await tasks.BatchCreateTasks(
        task_service_pb2.BatchCreateTasksRequest(
            requests=[
                task_service_pb2.CreateTaskRequest(
                    task=resources_pb2.Task(project_id=project.id, title=f"b{i}")
                )
                for i in range(3)
            ]
        ),
        metadata=actor("batcher"),
    )

    for task in response.tasks:
        (event,) = await task_events(tasks, task.id)
        assert (event.action, event.actor) == ("create", "batcher")
        assert changed_fields(event)["title"] == (None, task.title)


# --- ListTaskEvents ------------------------------------------------------------------------


async def _task_with_history(tasks: Tasks, project_id: int, updates: int) -> resources_pb2.Task:
    created = await create_task(tasks, project_id, title="v0")
    for version in range(1, updates + 1):
        await update_task(tasks, resources_pb2.Task(id=created.id, title=f"v{version}"), ["title"])
    return created


async def test_history_is_oldest_first_with_strictly_increasing_ids_and_only_that_task(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    first = await create_task(tasks, project.id, title="v0")
    other = await create_task(tasks, project.id)
    for version in (1, 2):
        await update_task(tasks, resources_pb2.Task(id=first.id, title=f"v{version}"), ["title"])
        await update_task(tasks, resources_pb2.Task(id=other.id, title=f"o{version}"), ["title"])

    events = await task_events(tasks, first.id)

    assert [e.action for e in events] == ["create", "update", "update"]
    assert [changed_fields(e)["title"][1] for e in events] == ["v0", "v1", "v2"]
    assert {e.entity_id for e in events} == {first.id}
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))  # strictly increasing
    times = [e.event_time.ToNanoseconds() for e in events]
    assert times == sorted(times)


async def test_history_pages_cover_every_event_once(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await _task_with_history(tasks, project.id, updates=4)
    everything = await task_events(tasks, created.id)

    pages: list[list[int]] = []
    token = ""
    while True:
        page = await tasks.ListTaskEvents(
            task_service_pb2.ListTaskEventsRequest(
                task_id=created.id, page_size=2, page_token=token
            )
        )
        pages.append([e.id for e in page.events])
        token = page.next_page_token
        if not token:
            break

    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == [e.id for e in everything]


async def test_history_page_size_is_clamped_and_a_full_last_page_has_no_token(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await _task_with_history(tasks, project.id, updates=3)

    exact = await tasks.ListTaskEvents(
        task_service_pb2.ListTaskEventsRequest(task_id=created.id, page_size=4)
    )
    huge = await tasks.ListTaskEvents(
        task_service_pb2.ListTaskEventsRequest(task_id=created.id, page_size=1_000_000)
    )

    assert len(exact.events) == 4
    assert exact.next_page_token == ""
    assert list(huge.events) == list(exact.events)


async def test_a_history_token_of_another_task_is_invalid(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    first = await _task_with_history(tasks, project.id, updates=2)
    second = await _task_with_history(tasks, project.id, updates=2)
    page = await tasks.ListTaskEvents(
        task_service_pb2.ListTaskEventsRequest(task_id=first.id, page_size=1)
    )

    failure = await expect_failure(
        tasks.ListTaskEvents(
            task_service_pb2.ListTaskEventsRequest(
                task_id=second.id, page_size=1, page_token=page.next_page_token
            )
        ),
        INVALID,
    )

    assert failure.fields == ["page_token"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"page_token": "not-a-token"}, "page_token"),
        ({"page_size": -1}, "page_size"),
        ({"task_id": 0}, "task_id"),
    ],
)
async def test_bad_history_requests_are_invalid(
    tasks: Tasks, project: resources_pb2.Project, fields: dict[str, Any], field: str
) -> None:
    created = await create_task(tasks, project.id)
    request = task_service_pb2.ListTaskEventsRequest(**{"task_id": created.id, **fields})

    failure = await expect_failure(tasks.ListTaskEvents(request), INVALID)

    assert field in failure.fields


async def test_history_of_an_unknown_task_is_not_found(tasks: Tasks) -> None:
    await expect_failure(
        tasks.ListTaskEvents(task_service_pb2.ListTaskEventsRequest(task_id=MISSING_ID)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_history_of_a_deleted_task_is_still_listed(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    await delete_task(tasks, created.id)

    assert [e.action for e in await task_events(tasks, created.id)] == ["create", "delete"]


# --- failed, aborted and no-op writes leave no event ----------------------------------------

Scenario = Callable[[Tasks, resources_pb2.Task, resources_pb2.Task], Awaitable[Any]]


FAILED_WRITES: dict[str, tuple[grpc.StatusCode, Scenario]] = {
    "update with a stale etag": (
        grpc.StatusCode.ABORTED,
        lambda tasks, target, _: update_task_call(
            tasks, resources_pb2.Task(id=target.id, title="x", etag='"0"'), ["title"]
        ),
    ),
    "update with a blank title": (
        INVALID,
        lambda tasks, target, _: update_task_call(
            tasks, resources_pb2.Task(id=target.id, title=" "), ["title"]
        ),
    ),
    "update with a missing assignee": (
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda tasks, target, _: update_task_call(
            tasks, resources_pb2.Task(id=target.id, assignee_id=MISSING_ID), ["assignee_id"]
        ),
    ),
    "update making a cycle": (
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda tasks, target, child: update_task_call(
            tasks, resources_pb2.Task(id=target.id, parent_task_id=child.id), ["parent_task_id"]
        ),
    ),
    "update changing project_id": (
        INVALID,
        lambda tasks, target, _: update_task_call(
            tasks, resources_pb2.Task(id=target.id, project_id=MISSING_ID), ["project_id"]
        ),
    ),
    "delete with live subtasks": (
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda tasks, target, _: delete_task(tasks, target.id),
    ),
    "delete with a stale etag": (
        grpc.StatusCode.ABORTED,
        lambda tasks, target, _: delete_task(tasks, target.id, etag='"0"', force=True),
    ),
    "undelete of a live task": (
        grpc.StatusCode.ALREADY_EXISTS,
        lambda tasks, target, _: undelete_task(tasks, target.id),
    ),
    "create under a missing parent": (
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda tasks, target, _: create_task(tasks, target.project_id, parent_task_id=MISSING_ID),
    ),
    "create with duplicate tags": (
        INVALID,
        lambda tasks, target, _: create_task(tasks, target.project_id, tags=["a", " a"]),
    ),
    "batch whose 8th task has a missing assignee": (
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda tasks, target, _: tasks.BatchCreateTasks(
            task_service_pb2.BatchCreateTasksRequest(
                requests=[
                    task_service_pb2.CreateTaskRequest(
                        task=resources_pb2.Task(
                            project_id=target.project_id,
                            title=f"b{i}",
                            assignee_id=MISSING_ID if i == 7 else None,
                        )
                    )
                    for i in range(10)
                ]
            )
        ),
    ),
}


@pytest.mark.parametrize("scenario", list(FAILED_WRITES))
async def test_a_failed_write_leaves_no_audit_event(
    server: TaskServer, tasks: Tasks, project: resources_pb2.Project, scenario: str
) -> None:
    code, write = FAILED_WRITES[scenario]
    target = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=target.id)
    history = await task_events(tasks, target.id)
    newest = await last_event_id(server)

    await expect_failure(write(tasks, target, child), code)

    assert await last_event_id(server) == newest
    assert await task_events(tasks, target.id) == history


async def test_an_update_on_a_deleted_task_leaves_no_audit_event(
    server: TaskServer, tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    await delete_task(tasks, created.id)
    newest = await last_event_id(server)

    await expect_failure(
        update_task_call(tasks, resources_pb2.Task(id=created.id, title="x"), ["title"]),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await expect_failure(delete_task(tasks, created.id), grpc.StatusCode.NOT_FOUND)

    assert await last_event_id(server) == newest


async def test_a_no_op_update_leaves_no_audit_event(
    server: TaskServer, tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    newest = await last_event_id(server)

    await update_task(tasks, resources_pb2.Task(id=created.id, title="ignored"), ["update_time"])
    await update_task(
        tasks, resources_pb2.Task(id=created.id, project_id=project.id), ["project_id"]
    )

    assert await last_event_id(server) == newest


async def test_a_replayed_create_leaves_no_second_event(
    server: TaskServer, tasks: Tasks, project: resources_pb2.Project
) -> None:
    request = task_service_pb2.CreateTaskRequest(
        task=resources_pb2.Task(project_id=project.id, title="once"),
        request_id=new_request_id(),
    )
    created = await tasks.CreateTask(request)
    newest = await last_event_id(server)

    await tasks.CreateTask(request)
    await expect_failure(
        tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(project_id=project.id, title="other"),
                request_id=request.request_id,
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )

    assert await last_event_id(server) == newest
    assert [e.action for e in await task_events(tasks, created.id)] == ["create"]


# --- projects and workers ------------------------------------------------------------------


async def test_create_project_records_a_create_event(
    server: TaskServer, projects: Projects
) -> None:
    created = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(
            project=resources_pb2.Project(name=unique("audited"))
        ),
        metadata=actor("erin"),
    )

    events = await stored_events(server, "project", created.id)

    assert [(e.action, e.actor) for e in events] == [("create", "erin")]  # actual: []
    assert events[0].changes["name"] == {"old": None, "new": created.name}


async def test_update_and_delete_project_record_events(
    server: TaskServer, projects: Projects
) -> None:
    created = await new_project(projects, description="before")
    newest = await last_event_id(server)

    await projects.UpdateProject(
        project_service_pb2.UpdateProjectRequest(
            project=resources_pb2.Project(id=created.id, description="after")
        ),
        metadata=actor("frank"),
    )
    await projects.DeleteProject(
        project_service_pb2.DeleteProjectRequest(id=created.id), metadata=actor("gina")
    )

    events = [e for e in await stored_events(server, "project", created.id) if e.id > newest]
    assert [(e.action, e.actor) for e in events] == [("update", "frank"), ("delete", "gina")]
    assert events[0].changes == {"description": {"old": "before", "new": "after"}}
    assert events[1].changes["name"] == {"old": created.name, "new": None}
    assert events[0].id < events[1].id


async def test_worker_create_update_and_delete_record_events(
    server: TaskServer, workers: Workers
) -> None:
    email = f"{unique('audited')}@example.com"
    created = await workers.CreateWorker(
        worker_service_pb2.CreateWorkerRequest(
            worker=resources_pb2.Worker(name="Before", email=email)
        ),
        metadata=actor("hal"),
    )
    await workers.UpdateWorker(
        worker_service_pb2.UpdateWorkerRequest(
            worker=resources_pb2.Worker(id=created.id, name="After")
        ),
        metadata=actor("ivy"),
    )
    await workers.DeleteWorker(
        worker_service_pb2.DeleteWorkerRequest(id=created.id), metadata=actor("jo")
    )

    events = await stored_events(server, "worker", created.id)

    assert [(e.action, e.actor) for e in events] == [
        ("create", "hal"),
        ("update", "ivy"),
        ("delete", "jo"),
    ]
    assert events[0].changes == {
        "name": {"old": None, "new": "Before"},
        "email": {"old": None, "new": email},
    }
    assert events[1].changes == {"name": {"old": "Before", "new": "After"}}
    assert [e.id for e in events] == sorted({e.id for e in events})


async def test_deleting_a_worker_records_the_unassignment_of_its_tasks(
    tasks: Tasks, workers: Workers, project: resources_pb2.Project
) -> None:
    worker = await new_worker(workers)
    assigned = await create_task(tasks, project.id, assignee_id=worker.id)

    await workers.DeleteWorker(
        worker_service_pb2.DeleteWorkerRequest(id=worker.id), metadata=actor("kim")
    )

    _, unassigned = await task_events(tasks, assigned.id)
    assert (unassigned.action, unassigned.actor) == ("update", "kim")
    assert changed_fields(unassigned) == {"assignee_id": (worker.id, None)}


async def test_failed_project_and_worker_writes_leave_no_audit_event(
    server: TaskServer,
    tasks: Tasks,
    projects: Projects,
    workers: Workers,
    project: resources_pb2.Project,
) -> None:
    worker = await new_worker(workers)
    newest = await last_event_id(server)

    await expect_failure(
        update_project_call(
            projects, resources_pb2.Project(id=project.id, name="x", etag='"0"'), ["name"]
        ),
        grpc.StatusCode.ABORTED,
    )
    await expect_failure(
        update_worker_call(workers, resources_pb2.Worker(id=worker.id, email="bad"), ["email"]),
        INVALID,
    )
    await expect_failure(
        workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=worker.id, etag='"0"')),
        grpc.StatusCode.ABORTED,
    )
    await create_task(tasks, project.id)  # a project with a task...
    newest_after_task = await last_event_id(server)
    await expect_failure(  # ...cannot be deleted
        projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=project.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert newest_after_task == newest + 1
    assert await last_event_id(server) == newest_after_task
