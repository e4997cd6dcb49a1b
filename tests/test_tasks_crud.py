"""TaskService create, read, update and delete, through the real server and database."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from tests.conftest import StatementCounter, create_task, unique
from tests.rpc_errors import expect_failure

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

Tasks = task_service_pb2_grpc.TaskServiceStub
Workers = worker_service_pb2_grpc.WorkerServiceStub
Projects = project_service_pb2_grpc.ProjectServiceStub

MISSING_ID = 9_000_000_000_000  # far beyond any id a test run creates
# A client-side deadline, so a server that never answers fails the test instead of hanging it.
DEADLINE = 30.0


async def get_task(
    tasks: Tasks,
    task_id: int,
    view: resources_pb2.TaskView.ValueType = resources_pb2.TASK_VIEW_UNSPECIFIED,
) -> resources_pb2.Task:
    task: resources_pb2.Task = await tasks.GetTask(
        task_service_pb2.GetTaskRequest(id=task_id, view=view), timeout=DEADLINE
    )
    return task


async def update_task(
    tasks: Tasks, task: resources_pb2.Task, paths: list[str] | None = None
) -> resources_pb2.Task:
    request = task_service_pb2.UpdateTaskRequest(task=task, update_mask=FieldMask(paths=paths))
    updated: resources_pb2.Task = await tasks.UpdateTask(request, timeout=DEADLINE)
    return updated


async def project_task_ids(
    tasks: Tasks, project_id: int, page_size: int = 1000, *, show_deleted: bool = False
) -> list[int]:
    """Ids of every (live, unless show_deleted) task of the project, walking all pages."""
    ids: list[int] = []
    token = ""
    while True:
        page = await tasks.ListTasks(
            task_service_pb2.ListTasksRequest(
                project_id=project_id,
                page_size=page_size,
                page_token=token,
                show_deleted=show_deleted,
            ),
            timeout=DEADLINE,
        )
        ids.extend(task.id for task in page.tasks)
        token = page.next_page_token
        if not token:
            return ids


async def new_worker(workers: Workers) -> resources_pb2.Worker:
    request = worker_service_pb2.CreateWorkerRequest(
        worker=resources_pb2.Worker(name="Grace", email=f"{unique('grace')}@example.com")
    )
    created: resources_pb2.Worker = await workers.CreateWorker(request)
    return created


async def new_project_id(projects: Projects) -> int:
    """Another project of this test's own."""
    created: resources_pb2.Project = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(
            project=resources_pb2.Project(name=unique("project"))
        )
    )
    return created.id


# --- CreateTask / GetTask -------------------------------------------------------------------


async def test_create_task_returns_a_new_id_and_equal_create_and_update_times(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, title="Write the spec")

    assert created.id > 0
    assert created.project_id == project.id
    assert created.title == "Write the spec"
    assert created.HasField("create_time")
    assert created.create_time.ToNanoseconds() > 0
    assert created.create_time == created.update_time


async def test_create_task_defaults_to_pending_and_medium(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    assert created.status == resources_pb2.TASK_STATUS_PENDING
    assert created.priority == resources_pb2.TASK_PRIORITY_MEDIUM
    assert not created.HasField("assignee_id")
    assert not created.HasField("parent_task_id")


async def test_create_task_keeps_given_status_priority_description_and_tags(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(
        tasks,
        project.id,
        description="details",
        status=resources_pb2.TASK_STATUS_BLOCKED,
        priority=resources_pb2.TASK_PRIORITY_URGENT,
        tags=["zeta", "alpha", "mid"],
    )

    assert created.description == "details"
    assert created.status == resources_pb2.TASK_STATUS_BLOCKED
    assert created.priority == resources_pb2.TASK_PRIORITY_URGENT
    assert list(created.tags) == ["zeta", "alpha", "mid"]


async def test_create_task_ids_are_distinct(tasks: Tasks, project: resources_pb2.Project) -> None:
    first = await create_task(tasks, project.id)
    second = await create_task(tasks, project.id)

    assert first.id != second.id


async def test_get_task_returns_what_create_task_returned(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    parent = await create_task(tasks, project.id)
    created = await create_task(
        tasks,
        project.id,
        description="read me back",
        priority=resources_pb2.TASK_PRIORITY_HIGH,
        tags=["b", "a"],
        assignee_id=worker.id,
        parent_task_id=parent.id,
    )

    fetched = await get_task(tasks, created.id)

    assert fetched == created
    assert fetched.assignee_id == worker.id
    assert fetched.parent_task_id == parent.id


async def test_get_task_unknown_id_is_not_found_with_task_id(tasks: Tasks) -> None:
    failure = await expect_failure(
        tasks.GetTask(task_service_pb2.GetTaskRequest(id=MISSING_ID)), grpc.StatusCode.NOT_FOUND
    )

    assert failure.info.reason == "TASK_NOT_FOUND"
    assert failure.info.metadata["task_id"] == str(MISSING_ID)


# --- views ----------------------------------------------------------------------------------


async def test_get_task_full_view_includes_assignee_and_direct_subtasks(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    root = await create_task(tasks, project.id, assignee_id=worker.id)
    first = await create_task(tasks, project.id, parent_task_id=root.id, assignee_id=worker.id)
    second = await create_task(tasks, project.id, parent_task_id=root.id)
    await create_task(tasks, project.id, parent_task_id=first.id)  # a grandchild

    full = await get_task(tasks, root.id, resources_pb2.TASK_VIEW_FULL)

    assert full.assignee == worker
    assert list(full.subtasks) == [first, second]  # direct children only, by id, BASIC view
    assert all(not s.HasField("assignee") and not s.subtasks for s in full.subtasks)


async def test_get_task_full_view_of_unassigned_leaf_has_empty_assignee_and_subtasks(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    leaf = await create_task(tasks, project.id)

    full = await get_task(tasks, leaf.id, resources_pb2.TASK_VIEW_FULL)

    assert not full.HasField("assignee")
    assert not full.HasField("creator")
    assert list(full.subtasks) == []
    assert full.project == project
    full.ClearField("project")
    assert full == leaf


async def test_get_task_basic_view_has_neither_assignee_nor_subtasks(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    root = await create_task(tasks, project.id, assignee_id=worker.id)
    await create_task(tasks, project.id, parent_task_id=root.id)

    for view in (resources_pb2.TASK_VIEW_BASIC, resources_pb2.TASK_VIEW_UNSPECIFIED):
        basic = await get_task(tasks, root.id, view)
        assert not basic.HasField("assignee")
        assert list(basic.subtasks) == []
        assert basic.assignee_id == worker.id
        assert basic == root


async def test_get_task_full_view_uses_the_same_few_statements_for_1_or_50_subtasks(
    tasks: Tasks,
    project: resources_pb2.Project,
    worker: resources_pb2.Worker,
    statements: StatementCounter,
) -> None:
    small = await create_task(tasks, project.id, assignee_id=worker.id)
    await create_task(tasks, project.id, parent_task_id=small.id, assignee_id=worker.id)
    large = await create_task(tasks, project.id, assignee_id=worker.id)
    await asyncio.gather(
        *(
            create_task(tasks, project.id, parent_task_id=large.id, assignee_id=worker.id)
            for _ in range(50)
        )
    )

    statements.statements.clear()
    small_full = await get_task(tasks, small.id, resources_pb2.TASK_VIEW_FULL)
    small_count = statements.count
    statements.statements.clear()
    large_full = await get_task(tasks, large.id, resources_pb2.TASK_VIEW_FULL)
    large_count = statements.count

    assert len(small_full.subtasks) == 1
    assert len(large_full.subtasks) == 50
    assert large_count == small_count, statements.statements
    # The task with its project, assignee and creator joined in; then the subtasks.
    assert large_count == 2, statements.statements


# --- ListTasks ------------------------------------------------------------------------------


async def test_list_tasks_by_project_returns_exactly_that_projects_tasks(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    other_project_id = await new_project_id(projects)
    mine = [(await create_task(tasks, project.id)).id for _ in range(3)]
    theirs = [(await create_task(tasks, other_project_id)).id for _ in range(2)]

    assert sorted(await project_task_ids(tasks, project.id)) == sorted(mine)
    assert sorted(await project_task_ids(tasks, other_project_id)) == sorted(theirs)


async def test_list_tasks_of_an_empty_project_is_empty(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    response = await tasks.ListTasks(task_service_pb2.ListTasksRequest(project_id=project.id))

    assert list(response.tasks) == []
    assert response.next_page_token == ""


async def test_list_tasks_pages_return_every_task_exactly_once(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = [(await create_task(tasks, project.id)).id for _ in range(5)]

    first = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=project.id, page_size=2)
    )
    walked = await project_task_ids(tasks, project.id, page_size=2)

    assert len(first.tasks) == 2
    assert first.next_page_token != ""
    assert len(walked) == 5
    assert sorted(walked) == sorted(created)


async def test_list_tasks_returns_the_same_tasks_as_get_task(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id, tags=["x"], assignee_id=worker.id)

    response = await tasks.ListTasks(task_service_pb2.ListTasksRequest(project_id=project.id))

    assert list(response.tasks) == [created]


# --- UpdateTask -----------------------------------------------------------------------------


async def test_update_task_with_mask_changes_only_masked_fields(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(
        tasks,
        project.id,
        title="old title",
        description="old description",
        priority=resources_pb2.TASK_PRIORITY_HIGH,
        tags=["keep"],
    )

    updated = await update_task(
        tasks,
        resources_pb2.Task(
            id=created.id,
            title="new title",
            description="not applied",
            priority=resources_pb2.TASK_PRIORITY_LOW,
            status=resources_pb2.TASK_STATUS_DONE,
            tags=["not", "applied"],
        ),
        ["title"],
    )

    assert updated.title == "new title"
    assert updated.description == "old description"
    assert updated.priority == resources_pb2.TASK_PRIORITY_HIGH
    assert updated.status == resources_pb2.TASK_STATUS_PENDING
    assert list(updated.tags) == ["keep"]
    assert await get_task(tasks, created.id) == updated


async def test_update_task_advances_update_time_and_keeps_create_time(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    updated = await update_task(
        tasks, resources_pb2.Task(id=created.id, description="changed"), ["description"]
    )

    assert updated.create_time == created.create_time
    assert updated.update_time.ToNanoseconds() > created.update_time.ToNanoseconds()
    assert (await get_task(tasks, created.id)).update_time == updated.update_time


async def test_update_task_with_empty_mask_updates_the_fields_set_in_the_request(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(
        tasks, project.id, description="stays", tags=["stays"], assignee_id=worker.id
    )

    updated = await update_task(
        tasks,
        resources_pb2.Task(
            id=created.id,
            title="renamed",
            status=resources_pb2.TASK_STATUS_IN_PROGRESS,
            priority=resources_pb2.TASK_PRIORITY_URGENT,
        ),
    )

    assert updated.title == "renamed"
    assert updated.status == resources_pb2.TASK_STATUS_IN_PROGRESS
    assert updated.priority == resources_pb2.TASK_PRIORITY_URGENT
    assert updated.description == "stays"
    assert list(updated.tags) == ["stays"]
    assert updated.assignee_id == worker.id
    assert await get_task(tasks, created.id) == updated


async def test_update_task_assigns_a_worker(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id)

    updated = await update_task(
        tasks, resources_pb2.Task(id=created.id, assignee_id=worker.id), ["assignee_id"]
    )

    assert updated.assignee_id == worker.id
    full = await get_task(tasks, created.id, resources_pb2.TASK_VIEW_FULL)
    assert full.assignee == worker


async def test_update_task_masked_unset_assignee_id_clears_the_assignee(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id, assignee_id=worker.id, title="kept")

    updated = await update_task(tasks, resources_pb2.Task(id=created.id), ["assignee_id"])

    assert not updated.HasField("assignee_id")
    assert updated.title == "kept"
    fetched = await get_task(tasks, created.id, resources_pb2.TASK_VIEW_FULL)
    assert not fetched.HasField("assignee_id")
    assert not fetched.HasField("assignee")


async def test_update_task_masked_unset_parent_task_id_makes_it_top_level(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    parent = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=parent.id)

    updated = await update_task(tasks, resources_pb2.Task(id=child.id), ["parent_task_id"])

    assert not updated.HasField("parent_task_id")
    full = await get_task(tasks, parent.id, resources_pb2.TASK_VIEW_FULL)
    assert list(full.subtasks) == []


async def test_update_task_replaces_tags_as_a_whole(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, tags=["a", "b", "c"])

    updated = await update_task(tasks, resources_pb2.Task(id=created.id, tags=["d", "a"]), ["tags"])

    assert list(updated.tags) == ["d", "a"]
    assert list((await get_task(tasks, created.id)).tags) == ["d", "a"]


async def test_update_task_masked_empty_tags_remove_all_tags(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, tags=["a", "b"])

    updated = await update_task(tasks, resources_pb2.Task(id=created.id), ["tags"])

    assert list(updated.tags) == []
    assert list((await get_task(tasks, created.id)).tags) == []


async def test_update_task_changing_project_id_is_invalid_and_changes_nothing(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    other_project_id = await new_project_id(projects)
    created = await create_task(tasks, project.id, title="original")

    failure = await expect_failure(
        tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(
                task=resources_pb2.Task(id=created.id, project_id=other_project_id, title="moved"),
                update_mask=FieldMask(paths=["project_id", "title"]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    assert failure.fields == ["task.project_id"]
    assert await get_task(tasks, created.id) == created


async def test_update_task_changing_project_id_with_empty_mask_is_invalid(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    other_project_id = await new_project_id(projects)
    created = await create_task(tasks, project.id)

    failure = await expect_failure(
        tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(
                task=resources_pb2.Task(id=created.id, project_id=other_project_id)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    assert failure.fields == ["task.project_id"]
    assert (await get_task(tasks, created.id)).project_id == project.id


async def test_update_task_with_the_same_project_id_is_accepted(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    updated = await update_task(
        tasks,
        resources_pb2.Task(id=created.id, project_id=project.id, title="same project"),
        ["project_id", "title"],
    )

    assert updated.project_id == project.id
    assert updated.title == "same project"


async def test_update_task_unknown_id_is_not_found(tasks: Tasks) -> None:
    failure = await expect_failure(
        tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(
                task=resources_pb2.Task(id=MISSING_ID, title="nobody"),
                update_mask=FieldMask(paths=["title"]),
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )

    assert failure.info.reason == "TASK_NOT_FOUND"
    assert failure.info.metadata["task_id"] == str(MISSING_ID)


# --- references -----------------------------------------------------------------------------


async def test_create_task_in_missing_project_fails_precondition(tasks: Tasks) -> None:
    failure = await expect_failure(
        create_task(tasks, MISSING_ID), grpc.StatusCode.FAILED_PRECONDITION
    )

    assert failure.info.reason == "PROJECT_NOT_FOUND"
    assert failure.info.metadata["project_id"] == str(MISSING_ID)


async def test_create_task_with_missing_assignee_fails_precondition(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    failure = await expect_failure(
        create_task(tasks, project.id, assignee_id=MISSING_ID),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "ASSIGNEE_NOT_FOUND"
    assert failure.info.metadata["assignee_id"] == str(MISSING_ID)
    assert await project_task_ids(tasks, project.id) == []


async def test_create_task_with_missing_parent_fails_precondition(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    failure = await expect_failure(
        create_task(tasks, project.id, parent_task_id=MISSING_ID),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "PARENT_TASK_NOT_FOUND"
    assert failure.info.metadata["parent_task_id"] == str(MISSING_ID)
    assert await project_task_ids(tasks, project.id) == []


async def test_create_task_under_a_parent_in_another_project_fails_precondition(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    foreign_parent = await create_task(tasks, await new_project_id(projects))

    failure = await expect_failure(
        create_task(tasks, project.id, parent_task_id=foreign_parent.id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "PARENT_IN_OTHER_PROJECT"
    assert failure.info.metadata["parent_task_id"] == str(foreign_parent.id)
    assert await project_task_ids(tasks, project.id) == []


async def test_update_task_with_missing_assignee_fails_precondition(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id, assignee_id=worker.id)

    failure = await expect_failure(
        tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(
                task=resources_pb2.Task(id=created.id, assignee_id=MISSING_ID),
                update_mask=FieldMask(paths=["assignee_id"]),
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "ASSIGNEE_NOT_FOUND"
    assert (await get_task(tasks, created.id)).assignee_id == worker.id


async def test_update_task_with_missing_parent_fails_precondition(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    failure = await expect_failure(
        tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(
                task=resources_pb2.Task(id=created.id, parent_task_id=MISSING_ID),
                update_mask=FieldMask(paths=["parent_task_id"]),
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "PARENT_TASK_NOT_FOUND"
    assert failure.info.metadata["parent_task_id"] == str(MISSING_ID)
    assert not (await get_task(tasks, created.id)).HasField("parent_task_id")


async def test_update_task_under_a_parent_in_another_project_fails_precondition(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    foreign_parent = await create_task(tasks, await new_project_id(projects))
    created = await create_task(tasks, project.id)

    failure = await expect_failure(
        tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(
                task=resources_pb2.Task(id=created.id, parent_task_id=foreign_parent.id),
                update_mask=FieldMask(paths=["parent_task_id"]),
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "PARENT_IN_OTHER_PROJECT"
    assert not (await get_task(tasks, created.id)).HasField("parent_task_id")


async def test_update_task_moving_a_task_under_its_own_descendant_is_a_cycle(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    root = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=root.id)
    grandchild = await create_task(tasks, project.id, parent_task_id=child.id)

    failure = await expect_failure(
        tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(
                task=resources_pb2.Task(id=root.id, parent_task_id=grandchild.id),
                update_mask=FieldMask(paths=["parent_task_id"]),
            ),
            timeout=DEADLINE,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "TASK_CYCLE"
    assert failure.info.metadata["task_id"] == str(root.id)
    assert not (await get_task(tasks, root.id)).HasField("parent_task_id")


async def test_update_task_making_a_task_its_own_parent_is_a_cycle(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    failure = await expect_failure(
        tasks.UpdateTask(
            task_service_pb2.UpdateTaskRequest(
                task=resources_pb2.Task(id=created.id, parent_task_id=created.id),
                update_mask=FieldMask(paths=["parent_task_id"]),
            ),
            timeout=DEADLINE,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "TASK_CYCLE"
    assert not (await get_task(tasks, created.id)).HasField("parent_task_id")


async def test_update_task_moving_a_task_to_another_branch_is_allowed(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    left = await create_task(tasks, project.id)
    right = await create_task(tasks, project.id)
    leaf = await create_task(tasks, project.id, parent_task_id=left.id)

    moved = await update_task(
        tasks, resources_pb2.Task(id=leaf.id, parent_task_id=right.id), ["parent_task_id"]
    )

    assert moved.parent_task_id == right.id
    left_full = await get_task(tasks, left.id, resources_pb2.TASK_VIEW_FULL)
    right_full = await get_task(tasks, right.id, resources_pb2.TASK_VIEW_FULL)
    assert [s.id for s in left_full.subtasks] == []
    assert [s.id for s in right_full.subtasks] == [leaf.id]


# --- DeleteTask -----------------------------------------------------------------------------


def content_of(task: resources_pb2.Task) -> resources_pb2.Task:
    """A copy of `task` without what a write changes: etag, update_time, delete_time."""
    copy = resources_pb2.Task()
    copy.CopyFrom(task)
    for name in ("etag", "update_time", "delete_time"):
        copy.ClearField(name)
    return copy


async def test_delete_task_soft_deletes_it_get_still_returns_it_and_list_hides_it(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id, tags=["t"], assignee_id=worker.id)
    kept = await create_task(tasks, project.id)

    deleted = await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=created.id))

    # The deleted task comes back with delete_time set and a new etag; its content is kept.
    assert deleted.HasField("delete_time")
    assert deleted.delete_time.ToNanoseconds() >= created.update_time.ToNanoseconds()
    assert deleted.etag != created.etag
    assert content_of(deleted) == content_of(created)
    # GetTask still finds it (AIP-164), exactly as DeleteTask returned it.
    assert await get_task(tasks, created.id) == deleted
    # List hides it unless show_deleted.
    assert await project_task_ids(tasks, project.id) == [kept.id]
    assert sorted(await project_task_ids(tasks, project.id, show_deleted=True)) == sorted(
        [created.id, kept.id]
    )


async def test_delete_task_twice_is_not_found_and_changes_nothing(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    deleted = await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=created.id))

    failure = await expect_failure(
        tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=created.id)),
        grpc.StatusCode.NOT_FOUND,
    )

    assert failure.info.reason == "TASK_NOT_FOUND"
    assert failure.info.metadata["task_id"] == str(created.id)
    assert await get_task(tasks, created.id) == deleted


async def test_delete_task_unknown_id_is_not_found(tasks: Tasks) -> None:
    failure = await expect_failure(
        tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=MISSING_ID)),
        grpc.StatusCode.NOT_FOUND,
    )

    assert failure.info.reason == "TASK_NOT_FOUND"


async def test_delete_task_with_subtasks_fails_precondition_and_keeps_it(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    parent = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=parent.id)

    failure = await expect_failure(
        tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=parent.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "TASK_HAS_SUBTASKS"
    assert failure.info.metadata["task_id"] == str(parent.id)
    assert sorted(await project_task_ids(tasks, project.id)) == sorted([parent.id, child.id])
    assert await get_task(tasks, parent.id) == parent  # not deleted, etag unchanged


async def test_delete_task_after_its_subtasks_are_deleted_succeeds(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    parent = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=parent.id)

    await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=child.id))
    deleted = await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=parent.id))

    assert deleted.id == parent.id
    assert deleted.HasField("delete_time")
    assert await project_task_ids(tasks, project.id) == []
    # Only live subtasks block a delete: a soft-deleted child does not.
    assert sorted(await project_task_ids(tasks, project.id, show_deleted=True)) == sorted(
        [parent.id, child.id]
    )


async def test_deleting_a_worker_leaves_its_tasks_unassigned(
    tasks: Tasks, workers: Workers, project: resources_pb2.Project
) -> None:
    doomed = await new_worker(workers)
    kept = await new_worker(workers)
    orphaned = await create_task(tasks, project.id, assignee_id=doomed.id)
    untouched = await create_task(tasks, project.id, assignee_id=kept.id)

    await workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=doomed.id))

    fetched = await get_task(tasks, orphaned.id, resources_pb2.TASK_VIEW_FULL)
    assert not fetched.HasField("assignee_id")
    assert not fetched.HasField("assignee")
    assert fetched.title == orphaned.title
    # Unassigning is a write to the task: its etag and update_time move.
    assert fetched.etag != orphaned.etag
    assert fetched.update_time.ToNanoseconds() > orphaned.update_time.ToNanoseconds()
    assert await get_task(tasks, untouched.id) == untouched


# --- concurrency ----------------------------------------------------------------------------


async def test_concurrent_create_task_calls_all_succeed_with_distinct_ids(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await asyncio.gather(
        *(create_task(tasks, project.id, title=f"concurrent {n}") for n in range(50))
    )

    ids = {task.id for task in created}
    assert len(ids) == 50
    assert {task.title for task in created} == {f"concurrent {n}" for n in range(50)}
    listed = await project_task_ids(tasks, project.id)
    assert len(listed) == 50
    assert set(listed) == ids
