"""Bad input: INVALID_ARGUMENT naming every bad field at once, and errors that leak nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
from tests.conftest import create_task, unique
from tests.rpc_errors import RpcFailure, expect_failure

ProjectStub = project_service_pb2_grpc.ProjectServiceStub
WorkerStub = worker_service_pb2_grpc.WorkerServiceStub
TaskStub = task_service_pb2_grpc.TaskServiceStub
INVALID = grpc.StatusCode.INVALID_ARGUMENT

# Text that would reveal the database, the ORM or the server's internals to a client.
LEAKS = ("SELECT", "INSERT", "UPDATE ", "DELETE FROM", "Traceback", 'File "')
LEAKS_ANY_CASE = ("sqlalchemy", "asyncpg", "sqlite3", "aiosqlite", "integrityerror", "psycopg")


def assert_invalid(failure: RpcFailure, *fields: str) -> None:
    """INVALID_ARGUMENT whose BadRequest names exactly `fields` (in any order)."""
    assert failure.code == INVALID
    assert failure.bad_request is not None, "INVALID_ARGUMENT must carry a BadRequest"
    assert sorted(failure.fields) == sorted(fields)
    for violation in failure.bad_request.field_violations:
        assert violation.description, f"{violation.field} needs a description"


def assert_no_leak(failure: RpcFailure) -> None:
    """Nothing in the message or details names SQL, drivers or a traceback."""
    texts = [failure.message, *failure.info.metadata.keys(), *failure.info.metadata.values()]
    if failure.bad_request is not None:
        texts += [v.description for v in failure.bad_request.field_violations]
    for text in texts:
        for leak in LEAKS:
            assert leak not in text, f"{leak!r} leaked in {text!r}"
        for leak in LEAKS_ANY_CASE:
            assert leak not in text.lower(), f"{leak!r} leaked in {text!r}"


def create_task_request(**fields: Any) -> task_service_pb2.CreateTaskRequest:
    fields.setdefault("project_id", 1)
    fields.setdefault("title", "a title")
    return task_service_pb2.CreateTaskRequest(task=resources_pb2.Task(**fields))


# --- CreateTask -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        pytest.param({"title": ""}, "task.title", id="empty-title"),
        pytest.param({"title": "   \t\n "}, "task.title", id="blank-title"),
        pytest.param({"title": "x" * 501}, "task.title", id="title-501"),
        pytest.param({"status": 99}, "task.status", id="unknown-status"),
        pytest.param({"priority": 42}, "task.priority", id="unknown-priority"),
        pytest.param({"project_id": 0}, "task.project_id", id="zero-project"),
        pytest.param({"project_id": -3}, "task.project_id", id="negative-project"),
        pytest.param({"assignee_id": -1}, "task.assignee_id", id="negative-assignee"),
        pytest.param({"assignee_id": 0}, "task.assignee_id", id="zero-assignee"),
        pytest.param({"parent_task_id": -7}, "task.parent_task_id", id="negative-parent"),
        pytest.param({"tags": [f"t{i}" for i in range(65)]}, "task.tags", id="65-tags"),
        pytest.param({"tags": ["a", "a"]}, "task.tags[1]", id="duplicate-tag"),
        pytest.param({"tags": ["ok", ""]}, "task.tags[1]", id="empty-tag"),
        pytest.param({"tags": [" "]}, "task.tags[0]", id="blank-tag"),
        pytest.param({"tags": ["x" * 65]}, "task.tags[0]", id="tag-65-chars"),
    ],
)
async def test_create_task_with_a_bad_field_is_invalid_argument_naming_it(
    tasks: TaskStub, project: resources_pb2.Project, fields: dict[str, Any], bad_field: str
) -> None:
    fields["project_id"] = fields.get("project_id", project.id)

    failure = await expect_failure(tasks.CreateTask(create_task_request(**fields)), INVALID)

    assert_invalid(failure, bad_field)
    assert bad_field in failure.message


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"title": "x" * 500}, id="title-500"),
        pytest.param({"tags": [f"t{i}" for i in range(64)]}, id="64-tags"),
        pytest.param({"tags": ["x" * 64]}, id="tag-64-chars"),
        pytest.param({"status": 0, "priority": 0}, id="unspecified-enums-default"),
    ],
)
async def test_create_task_at_the_limits_is_accepted(
    tasks: TaskStub, project: resources_pb2.Project, fields: dict[str, Any]
) -> None:
    created = await create_task(tasks, project.id, **fields)

    assert created.id > 0
    assert created.status == resources_pb2.TASK_STATUS_PENDING
    assert created.priority == resources_pb2.TASK_PRIORITY_MEDIUM


async def test_create_task_title_limit_counts_characters_after_trimming(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, title="  " + "x" * 500 + " ")

    assert created.title == "x" * 500


async def test_create_task_reports_every_bad_field_at_once(tasks: TaskStub) -> None:
    request = create_task_request(
        project_id=-1,
        title=" ",
        status=99,
        priority=42,
        assignee_id=-2,
        parent_task_id=0,
        tags=["a", "a", ""],
    )

    failure = await expect_failure(tasks.CreateTask(request), INVALID)

    assert_invalid(
        failure,
        "task.project_id",
        "task.title",
        "task.status",
        "task.priority",
        "task.assignee_id",
        "task.parent_task_id",
        "task.tags[1]",
        "task.tags[2]",
    )
    assert failure.info.reason == "INVALID_ARGUMENT"


async def test_create_task_too_many_and_bad_tags_are_all_reported(tasks: TaskStub) -> None:
    tags = [f"t{i}" for i in range(64)] + ["t0", ""]

    failure = await expect_failure(tasks.CreateTask(create_task_request(tags=tags)), INVALID)

    assert_invalid(failure, "task.tags", "task.tags[64]", "task.tags[65]")


# --- Projects and workers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("  \t ", id="blank"),
        pytest.param("n" * 201, id="201-chars"),
    ],
)
async def test_create_project_with_bad_name_is_invalid_argument(
    projects: ProjectStub, name: str
) -> None:
    request = project_service_pb2.CreateProjectRequest(project=resources_pb2.Project(name=name))

    failure = await expect_failure(projects.CreateProject(request), INVALID)

    assert_invalid(failure, "project.name")


async def test_create_project_name_of_200_chars_is_accepted(projects: ProjectStub) -> None:
    name = unique("p").ljust(200, "n")
    request = project_service_pb2.CreateProjectRequest(
        project=resources_pb2.Project(name=f" {name} ")
    )

    created = await projects.CreateProject(request)

    assert created.name == name


async def test_update_project_with_empty_name_in_mask_is_invalid_argument(
    projects: ProjectStub, project: resources_pb2.Project
) -> None:
    failure = await expect_failure(
        projects.UpdateProject(
            project_service_pb2.UpdateProjectRequest(
                project=resources_pb2.Project(id=project.id, name=""),
                update_mask=FieldMask(paths=["name"]),
            )
        ),
        INVALID,
    )

    assert_invalid(failure, "project.name")
    assert await projects.GetProject(project_service_pb2.GetProjectRequest(id=project.id)) == (
        project
    )


async def test_create_worker_email_limit_counts_characters_after_trimming(
    workers: WorkerStub,
) -> None:
    local = unique("long").ljust(60, "x")
    email = f"{local}@{'d' * (254 - len(local) - 5)}.com"
    assert len(email) == 254
    request = worker_service_pb2.CreateWorkerRequest(
        worker=resources_pb2.Worker(name="Long", email=f"  {email}  ")
    )

    created = await workers.CreateWorker(request)

    assert created.email == email


@pytest.mark.parametrize(
    "email",
    [
        pytest.param("", id="empty"),
        pytest.param("no-at-sign.example.com", id="no-at"),
        pytest.param("someone@localhost", id="no-dot-in-domain"),
        pytest.param("two@at@example.com", id="two-ats"),
        pytest.param("has space@example.com", id="space"),
        pytest.param("a@" + "d" * 250 + ".com", id="too-long"),
    ],
)
async def test_create_worker_with_bad_email_is_invalid_argument(
    workers: WorkerStub, email: str
) -> None:
    request = worker_service_pb2.CreateWorkerRequest(
        worker=resources_pb2.Worker(name="Ada", email=email)
    )

    failure = await expect_failure(workers.CreateWorker(request), INVALID)

    assert_invalid(failure, "worker.email")


@pytest.mark.parametrize("name", [pytest.param("", id="empty"), pytest.param("  ", id="blank")])
async def test_create_worker_with_empty_name_is_invalid_argument(
    workers: WorkerStub, name: str
) -> None:
    request = worker_service_pb2.CreateWorkerRequest(
        worker=resources_pb2.Worker(name=name, email=f"{unique('w')}@example.com")
    )

    failure = await expect_failure(workers.CreateWorker(request), INVALID)

    assert_invalid(failure, "worker.name")


async def test_create_worker_reports_name_and_email_at_once(workers: WorkerStub) -> None:
    request = worker_service_pb2.CreateWorkerRequest(
        worker=resources_pb2.Worker(name="", email="nope")
    )

    failure = await expect_failure(workers.CreateWorker(request), INVALID)

    assert_invalid(failure, "worker.name", "worker.email")


async def test_update_worker_with_bad_email_in_mask_is_invalid_argument(
    workers: WorkerStub, worker: resources_pb2.Worker
) -> None:
    failure = await expect_failure(
        workers.UpdateWorker(
            worker_service_pb2.UpdateWorkerRequest(
                worker=resources_pb2.Worker(id=worker.id, email="nope"),
                update_mask=FieldMask(paths=["email"]),
            )
        ),
        INVALID,
    )

    assert_invalid(failure, "worker.email")


# --- Ids and views ----------------------------------------------------------------------

# (stub fixture, method, request type) of every RPC that takes a bare id.
ID_CALLS = [
    ("tasks", "GetTask", task_service_pb2.GetTaskRequest),
    ("tasks", "DeleteTask", task_service_pb2.DeleteTaskRequest),
    ("tasks", "UndeleteTask", task_service_pb2.UndeleteTaskRequest),
    ("projects", "GetProject", project_service_pb2.GetProjectRequest),
    ("projects", "DeleteProject", project_service_pb2.DeleteProjectRequest),
    ("workers", "GetWorker", worker_service_pb2.GetWorkerRequest),
    ("workers", "DeleteWorker", worker_service_pb2.DeleteWorkerRequest),
]


@pytest.mark.parametrize("bad_id", [0, -1, -(2**63)])
@pytest.mark.parametrize(
    ("stub", "method", "request_type"), ID_CALLS, ids=[call[1] for call in ID_CALLS]
)
async def test_get_and_delete_with_non_positive_id_are_invalid_argument(
    tasks: TaskStub,
    projects: ProjectStub,
    workers: WorkerStub,
    stub: str,
    method: str,
    request_type: Any,
    bad_id: int,
) -> None:
    stubs = {"tasks": tasks, "projects": projects, "workers": workers}
    call = getattr(stubs[stub], method)

    failure = await expect_failure(call(request_type(id=bad_id)), INVALID)

    assert_invalid(failure, "id")


def update_task_request(task_id: int) -> task_service_pb2.UpdateTaskRequest:
    return task_service_pb2.UpdateTaskRequest(
        task=resources_pb2.Task(id=task_id, title="x"), update_mask=FieldMask(paths=["title"])
    )


def update_project_request(project_id: int) -> project_service_pb2.UpdateProjectRequest:
    return project_service_pb2.UpdateProjectRequest(
        project=resources_pb2.Project(id=project_id, name="x"),
        update_mask=FieldMask(paths=["name"]),
    )


def update_worker_request(worker_id: int) -> worker_service_pb2.UpdateWorkerRequest:
    return worker_service_pb2.UpdateWorkerRequest(
        worker=resources_pb2.Worker(id=worker_id, name="x"), update_mask=FieldMask(paths=["name"])
    )


# (stub fixture, method, request builder, the id's field path) of every Update.
UPDATE_CALLS: list[tuple[str, str, Callable[[int], Any], str]] = [
    ("tasks", "UpdateTask", update_task_request, "task.id"),
    ("projects", "UpdateProject", update_project_request, "project.id"),
    ("workers", "UpdateWorker", update_worker_request, "worker.id"),
]


@pytest.mark.parametrize("bad_id", [0, -5])
@pytest.mark.parametrize(
    ("stub", "method", "build", "field"), UPDATE_CALLS, ids=[call[1] for call in UPDATE_CALLS]
)
async def test_update_with_non_positive_id_is_invalid_argument(
    tasks: TaskStub,
    projects: ProjectStub,
    workers: WorkerStub,
    stub: str,
    method: str,
    build: Callable[[int], Any],
    field: str,
    bad_id: int,
) -> None:
    stubs = {"tasks": tasks, "projects": projects, "workers": workers}
    call = getattr(stubs[stub], method)

    failure = await expect_failure(call(build(bad_id)), INVALID)

    assert_invalid(failure, field)


async def test_get_task_with_unknown_view_is_invalid_argument(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    task = await create_task(tasks, project.id)

    failure = await expect_failure(
        tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id, view=99)),  # type: ignore[arg-type]
        INVALID,
    )

    assert_invalid(failure, "view")


async def test_get_task_with_bad_id_and_view_reports_both(tasks: TaskStub) -> None:
    failure = await expect_failure(
        tasks.GetTask(task_service_pb2.GetTaskRequest(id=0, view=99)),  # type: ignore[arg-type]
        INVALID,
    )

    assert_invalid(failure, "id", "view")


# --- UpdateTask masks -------------------------------------------------------------------


async def update_task(
    tasks: TaskStub, task: resources_pb2.Task, paths: list[str]
) -> resources_pb2.Task:
    updated: resources_pb2.Task = await tasks.UpdateTask(
        task_service_pb2.UpdateTaskRequest(task=task, update_mask=FieldMask(paths=paths))
    )
    return updated


@pytest.mark.parametrize(
    "paths",
    [
        pytest.param(["nope"], id="unknown"),
        pytest.param(["title", "nope"], id="unknown-with-known"),
        pytest.param(["tags[0]"], id="indexed"),
        pytest.param(["assignee.name"], id="nested"),
        pytest.param(["*", "title"], id="star-with-other"),
    ],
)
async def test_update_task_with_bad_mask_is_invalid_argument(
    tasks: TaskStub, project: resources_pb2.Project, paths: list[str]
) -> None:
    task = await create_task(tasks, project.id, tags=["a"])
    # Every other field valid, so that `*` (all mutable fields) has only the mask to blame.
    change = resources_pb2.Task()
    change.CopyFrom(task)
    change.title = unique("changed")
    change.tags[:] = ["b"]

    failure = await expect_failure(update_task(tasks, change, paths), INVALID)

    assert_invalid(failure, "update_mask")
    unchanged = await tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id))
    assert unchanged == task


async def test_update_task_mask_error_names_the_bad_path(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    task = await create_task(tasks, project.id)

    failure = await expect_failure(
        update_task(tasks, resources_pb2.Task(id=task.id), ["colour"]), INVALID
    )

    assert failure.bad_request is not None
    assert "colour" in failure.bad_request.field_violations[0].description


async def test_update_task_ignores_output_only_paths_in_the_mask(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    task = await create_task(tasks, project.id, description="kept")
    change = resources_pb2.Task(id=task.id, title=unique("ignored"), description="ignored")
    change.create_time.FromSeconds(86_400)
    change.delete_time.FromSeconds(86_400)  # output only: an update never deletes

    updated = await update_task(
        tasks, change, ["id", "create_time", "update_time", "etag", "delete_time"]
    )

    assert updated == task
    assert not updated.HasField("delete_time")
    assert await tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id)) == task


async def test_update_task_applies_writable_paths_next_to_output_only_ones(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    task = await create_task(tasks, project.id, description="old")
    change = resources_pb2.Task(id=task.id, title=unique("ignored"), description="new")
    change.create_time.FromSeconds(86_400)

    updated = await update_task(tasks, change, ["create_time", "description"])

    assert updated.description == "new"
    assert updated.title == task.title
    assert updated.create_time == task.create_time


@pytest.mark.parametrize(
    ("path", "field"),
    [("status", "task.status"), ("priority", "task.priority"), ("title", "task.title")],
)
async def test_update_task_clearing_a_required_field_through_the_mask_is_invalid_argument(
    tasks: TaskStub, project: resources_pb2.Project, path: str, field: str
) -> None:
    task = await create_task(tasks, project.id, status=resources_pb2.TASK_STATUS_DONE)

    failure = await expect_failure(
        update_task(tasks, resources_pb2.Task(id=task.id), [path]), INVALID
    )

    assert_invalid(failure, field)
    assert await tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id)) == task


async def test_update_task_with_unknown_enum_values_is_invalid_argument(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    task = await create_task(tasks, project.id)
    change = resources_pb2.Task(id=task.id, status=99, priority=42)  # type: ignore[arg-type]

    failure = await expect_failure(update_task(tasks, change, ["status", "priority"]), INVALID)

    assert_invalid(failure, "task.status", "task.priority")


async def test_update_task_reports_bad_mask_and_bad_values_at_once(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    task = await create_task(tasks, project.id)
    change = resources_pb2.Task(id=task.id, title="", tags=["a", "a"])

    failure = await expect_failure(update_task(tasks, change, ["title", "tags", "nope"]), INVALID)

    assert_invalid(failure, "update_mask", "task.title", "task.tags[1]")


# --- ListTasks paging -------------------------------------------------------------------


async def test_list_tasks_with_negative_page_size_is_invalid_argument(tasks: TaskStub) -> None:
    failure = await expect_failure(
        tasks.ListTasks(task_service_pb2.ListTasksRequest(page_size=-1)), INVALID
    )

    assert_invalid(failure, "page_size")


async def test_list_tasks_with_unknown_order_by_lists_the_accepted_fields(
    tasks: TaskStub,
) -> None:
    failure = await expect_failure(
        tasks.ListTasks(task_service_pb2.ListTasksRequest(order_by="colour")), INVALID
    )

    assert_invalid(failure, "order_by")
    assert failure.bad_request is not None
    description = failure.bad_request.field_violations[0].description
    assert "colour" in description
    for accepted in ("create_time", "update_time", "priority", "title"):
        assert accepted in description


@pytest.mark.parametrize(
    "order_by",
    ["title sideways", "title desc extra", "id", "Title", "priority,title"],
)
async def test_list_tasks_with_malformed_order_by_is_invalid_argument(
    tasks: TaskStub, order_by: str
) -> None:
    failure = await expect_failure(
        tasks.ListTasks(task_service_pb2.ListTasksRequest(order_by=order_by)), INVALID
    )

    assert_invalid(failure, "order_by")


async def test_list_tasks_reports_page_size_and_order_by_at_once(tasks: TaskStub) -> None:
    failure = await expect_failure(
        tasks.ListTasks(task_service_pb2.ListTasksRequest(page_size=-5, order_by="colour")),
        INVALID,
    )

    assert_invalid(failure, "page_size", "order_by")


@pytest.mark.parametrize("token", ["abc", "a", "====", "not a token at all!", "é" * 10])
async def test_list_tasks_with_garbage_page_token_is_invalid_argument(
    tasks: TaskStub, token: str
) -> None:
    failure = await expect_failure(
        tasks.ListTasks(task_service_pb2.ListTasksRequest(page_token=token)), INVALID
    )

    assert_invalid(failure, "page_token")


async def test_list_tasks_with_damaged_real_token_is_invalid_argument(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    for _ in range(3):
        await create_task(tasks, project.id)
    first = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=project.id, page_size=1)
    )
    token = first.next_page_token
    assert token
    flipped = token[:-10] + ("A" if token[-10] != "A" else "B") + token[-9:]
    damaged = [token[:-1], token[:-2], token[:-3], token[: len(token) // 2], flipped, token + "x"]

    for bad in damaged:
        failure = await expect_failure(
            tasks.ListTasks(
                task_service_pb2.ListTasksRequest(
                    project_id=project.id, page_size=1, page_token=bad
                )
            ),
            INVALID,
        )
        assert_invalid(failure, "page_token")
        assert failure.info.reason == "INVALID_PAGE_TOKEN"
    # The intact token still works.
    second = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=project.id, page_size=1, page_token=token)
    )
    assert len(second.tasks) == 1
    assert second.tasks[0].id != first.tasks[0].id


async def test_list_tasks_token_from_another_query_is_invalid_argument(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    for _ in range(2):
        await create_task(tasks, project.id)
    first = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=project.id, page_size=1)
    )

    failure = await expect_failure(
        tasks.ListTasks(
            task_service_pb2.ListTasksRequest(
                project_id=project.id,
                page_size=1,
                page_token=first.next_page_token,
                order_by="title",
            )
        ),
        INVALID,
    )

    assert_invalid(failure, "page_token")


async def test_list_projects_and_workers_reject_bad_paging(
    projects: ProjectStub, workers: WorkerStub
) -> None:
    for call in (
        projects.ListProjects(project_service_pb2.ListProjectsRequest(page_size=-1)),
        workers.ListWorkers(worker_service_pb2.ListWorkersRequest(page_size=-1)),
    ):
        assert_invalid(await expect_failure(call, INVALID), "page_size")
    for call in (
        projects.ListProjects(project_service_pb2.ListProjectsRequest(page_token="abc")),
        workers.ListWorkers(worker_service_pb2.ListWorkersRequest(page_token="abc")),
    ):
        assert_invalid(await expect_failure(call, INVALID), "page_token")


# --- What errors reveal -----------------------------------------------------------------


async def test_failed_precondition_error_reveals_no_sql(
    projects: ProjectStub, tasks: TaskStub, project: resources_pb2.Project
) -> None:
    await create_task(tasks, project.id)

    failure = await expect_failure(
        projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=project.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "PROJECT_HAS_TASKS"
    assert_no_leak(failure)


async def test_missing_reference_error_reveals_no_sql(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    failure = await expect_failure(
        tasks.CreateTask(create_task_request(project_id=project.id, assignee_id=2**62)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "ASSIGNEE_NOT_FOUND"
    assert_no_leak(failure)


async def test_already_exists_error_reveals_no_sql(
    projects: ProjectStub, project: resources_pb2.Project
) -> None:
    failure = await expect_failure(
        projects.CreateProject(
            project_service_pb2.CreateProjectRequest(
                project=resources_pb2.Project(name=project.name)
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )

    assert failure.info.reason == "PROJECT_NAME_TAKEN"
    assert_no_leak(failure)


async def test_worker_already_exists_error_reveals_no_sql(
    workers: WorkerStub, worker: resources_pb2.Worker
) -> None:
    failure = await expect_failure(
        workers.CreateWorker(
            worker_service_pb2.CreateWorkerRequest(
                worker=resources_pb2.Worker(name="Copy", email=worker.email)
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )

    assert failure.info.reason == "WORKER_EMAIL_TAKEN"
    assert_no_leak(failure)


async def test_invalid_argument_and_not_found_errors_reveal_no_sql(
    tasks: TaskStub, projects: ProjectStub
) -> None:
    invalid = await expect_failure(
        tasks.ListTasks(task_service_pb2.ListTasksRequest(page_token="abc", order_by="x")),
        INVALID,
    )
    missing = await expect_failure(
        projects.GetProject(project_service_pb2.GetProjectRequest(id=2**62)),
        grpc.StatusCode.NOT_FOUND,
    )

    assert_no_leak(invalid)
    assert_no_leak(missing)


async def test_nul_characters_are_invalid_argument_not_a_database_error(tasks, projects, project):
    request = task_service_pb2.CreateTaskRequest(
        task=resources_pb2.Task(
            project_id=project.id, title="a\x00b", description="c\x00", tags=["t\x00"]
        )
    )
    failure = await expect_failure(tasks.CreateTask(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.fields == ["task.title", "task.description", "task.tags[0]"]
    listing = task_service_pb2.ListTasksRequest(project_id=project.id, title_contains="\x00")
    failure = await expect_failure(tasks.ListTasks(listing), grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.fields == ["title_contains"]
    create = project_service_pb2.CreateProjectRequest(project={"name": "x", "description": "\x00"})
    failure = await expect_failure(projects.CreateProject(create), grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.fields == ["project.description"]
