"""ProjectService and WorkerService through the real server: CRUD, uniqueness, deletes."""

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
from tests.conftest import create_task, unique
from tests.rpc_errors import expect_failure, read_failure

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

ProjectStub = project_service_pb2_grpc.ProjectServiceStub
WorkerStub = worker_service_pb2_grpc.WorkerServiceStub
TaskStub = task_service_pb2_grpc.TaskServiceStub

# Far more pages than any test run creates: a walk that does not end is a bug.
MAX_PAGES = 10_000
CONCURRENT_ROUNDS = 5


async def new_project(
    projects: ProjectStub, name: str, description: str = ""
) -> resources_pb2.Project:
    request = project_service_pb2.CreateProjectRequest(
        project=resources_pb2.Project(name=name, description=description)
    )
    created: resources_pb2.Project = await projects.CreateProject(request)
    return created


async def new_worker(workers: WorkerStub, email: str, name: str = "Grace") -> resources_pb2.Worker:
    request = worker_service_pb2.CreateWorkerRequest(
        worker=resources_pb2.Worker(name=name, email=email)
    )
    created: resources_pb2.Worker = await workers.CreateWorker(request)
    return created


def unique_email(prefix: str = "worker") -> str:
    return f"{unique(prefix)}@example.com"


async def all_project_pages(projects: ProjectStub, page_size: int) -> list[list[int]]:
    """Every page of ListProjects as id lists, following next_page_token to the end."""
    pages: list[list[int]] = []
    token = ""
    for _ in range(MAX_PAGES):
        response = await projects.ListProjects(
            project_service_pb2.ListProjectsRequest(page_size=page_size, page_token=token)
        )
        pages.append([p.id for p in response.projects])
        token = response.next_page_token
        if not token:
            return pages
    pytest.fail("ListProjects never returned an empty next_page_token")


async def all_worker_pages(workers: WorkerStub, page_size: int) -> list[list[int]]:
    """Every page of ListWorkers as id lists, following next_page_token to the end."""
    pages: list[list[int]] = []
    token = ""
    for _ in range(MAX_PAGES):
        response = await workers.ListWorkers(
            worker_service_pb2.ListWorkersRequest(page_size=page_size, page_token=token)
        )
        pages.append([w.id for w in response.workers])
        token = response.next_page_token
        if not token:
            return pages
    pytest.fail("ListWorkers never returned an empty next_page_token")


def check_walk(pages: list[list[int]], page_size: int, created: set[int]) -> None:
    """Pages are full but the last, ordered by id, no id twice, every created one present."""
    walked = [project_id for page in pages for project_id in page]
    assert walked == sorted(walked), "pages must be ordered by id"
    assert len(walked) == len(set(walked)), "no resource may appear on two pages"
    assert created <= set(walked)
    assert all(len(page) == page_size for page in pages[:-1])
    # A token is returned only when more follow, so the last page is never empty.
    assert pages[-1], "next_page_token was set although no more resources followed"
    assert len(pages[-1]) <= page_size


# --- Projects ---------------------------------------------------------------------------


async def test_create_project_returns_it_with_id_and_times(projects: ProjectStub) -> None:
    name = unique("create")
    created = await new_project(projects, name, "some description")

    assert created.id > 0
    assert created.name == name
    assert created.description == "some description"
    assert created.HasField("create_time")
    assert created.create_time == created.update_time


async def test_create_project_ignores_output_only_fields_and_trims_name(
    projects: ProjectStub,
) -> None:
    name = unique("trimmed")
    request = project_service_pb2.CreateProjectRequest(
        project=resources_pb2.Project(id=987654321, name=f"  {name}  ")
    )
    request.project.create_time.FromSeconds(86_400)

    created = await projects.CreateProject(request)

    assert created.id != 987654321
    assert created.name == name
    assert created.create_time.seconds != 86_400


async def test_get_project_returns_what_create_returned(projects: ProjectStub) -> None:
    created = await new_project(projects, unique("get"), "described")

    fetched = await projects.GetProject(project_service_pb2.GetProjectRequest(id=created.id))

    assert fetched == created


async def test_list_projects_walks_every_project_exactly_once(projects: ProjectStub) -> None:
    created = {(await new_project(projects, unique("listed"))).id for _ in range(5)}

    pages = await all_project_pages(projects, page_size=2)

    check_walk(pages, 2, created)


async def test_list_projects_default_page_size_is_50(projects: ProjectStub) -> None:
    for _ in range(51):
        await new_project(projects, unique("many"))

    response = await projects.ListProjects(project_service_pb2.ListProjectsRequest())

    assert len(response.projects) == 50
    assert response.next_page_token


async def test_update_project_changes_only_masked_fields_and_advances_update_time(
    projects: ProjectStub,
) -> None:
    created = await new_project(projects, unique("before"), "old description")
    request = project_service_pb2.UpdateProjectRequest(
        project=resources_pb2.Project(
            id=created.id, name=unique("ignored"), description="new description"
        ),
        update_mask=FieldMask(paths=["description"]),
    )

    updated = await projects.UpdateProject(request)

    assert updated.name == created.name
    assert updated.description == "new description"
    assert updated.create_time == created.create_time
    assert updated.update_time.ToNanoseconds() > created.update_time.ToNanoseconds()
    fetched = await projects.GetProject(project_service_pb2.GetProjectRequest(id=created.id))
    assert fetched == updated


async def test_update_project_renames_with_name_in_mask(projects: ProjectStub) -> None:
    created = await new_project(projects, unique("old-name"), "kept")
    new_name = unique("new-name")

    updated = await projects.UpdateProject(
        project_service_pb2.UpdateProjectRequest(
            project=resources_pb2.Project(id=created.id, name=new_name),
            update_mask=FieldMask(paths=["name"]),
        )
    )

    assert updated.name == new_name
    assert updated.description == "kept"
    # The old name is free again.
    assert (await new_project(projects, created.name)).name == created.name


async def test_update_project_with_empty_mask_changes_the_fields_set(
    projects: ProjectStub,
) -> None:
    created = await new_project(projects, unique("empty-mask"), "old")

    updated = await projects.UpdateProject(
        project_service_pb2.UpdateProjectRequest(
            project=resources_pb2.Project(id=created.id, description="new")
        )
    )

    assert updated.name == created.name
    assert updated.description == "new"


async def test_delete_project_then_it_is_not_found(projects: ProjectStub) -> None:
    created = await new_project(projects, unique("doomed"))

    await projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=created.id))

    failure = await expect_failure(
        projects.GetProject(project_service_pb2.GetProjectRequest(id=created.id)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert failure.info.reason == "PROJECT_NOT_FOUND"
    assert failure.info.metadata["project_id"] == str(created.id)
    again = await expect_failure(
        projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=created.id)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert again.info.reason == "PROJECT_NOT_FOUND"
    update = await expect_failure(
        projects.UpdateProject(
            project_service_pb2.UpdateProjectRequest(
                project=resources_pb2.Project(id=created.id, name=unique("late"))
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert update.info.reason == "PROJECT_NOT_FOUND"


async def test_duplicate_project_name_is_already_exists(projects: ProjectStub) -> None:
    name = unique("taken")
    await new_project(projects, name)

    failure = await expect_failure(new_project(projects, name), grpc.StatusCode.ALREADY_EXISTS)

    assert failure.info.reason == "PROJECT_NAME_TAKEN"


async def test_project_name_differing_only_by_surrounding_blanks_is_already_exists(
    projects: ProjectStub,
) -> None:
    name = unique("blanks")
    await new_project(projects, name)

    failure = await expect_failure(
        new_project(projects, f" {name}\t"), grpc.StatusCode.ALREADY_EXISTS
    )

    assert failure.info.reason == "PROJECT_NAME_TAKEN"


async def test_renaming_project_to_a_taken_name_is_already_exists(projects: ProjectStub) -> None:
    first = await new_project(projects, unique("first"))
    second = await new_project(projects, unique("second"))

    failure = await expect_failure(
        projects.UpdateProject(
            project_service_pb2.UpdateProjectRequest(
                project=resources_pb2.Project(id=second.id, name=first.name),
                update_mask=FieldMask(paths=["name"]),
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )

    assert failure.info.reason == "PROJECT_NAME_TAKEN"
    unchanged = await projects.GetProject(project_service_pb2.GetProjectRequest(id=second.id))
    assert unchanged == second


@pytest.mark.parametrize("round_", range(CONCURRENT_ROUNDS))
async def test_concurrent_create_project_with_same_name_one_wins(
    projects: ProjectStub, round_: int
) -> None:
    name = unique(f"race{round_}")

    results = await asyncio.gather(
        new_project(projects, name), new_project(projects, name), return_exceptions=True
    )

    created = [r for r in results if isinstance(r, resources_pb2.Project)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) == 1, results
    assert len(failed) == 1, results
    assert created[0].name == name
    assert read_failure(failed[0], grpc.StatusCode.ALREADY_EXISTS).info.reason == (
        "PROJECT_NAME_TAKEN"
    )


async def test_delete_project_with_live_tasks_is_failed_precondition_until_all_are_deleted(
    projects: ProjectStub, tasks: TaskStub, project: resources_pb2.Project
) -> None:
    first = await create_task(tasks, project.id)
    second = await create_task(tasks, project.id)

    failure = await expect_failure(
        projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=project.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert failure.info.reason == "PROJECT_HAS_TASKS"
    assert failure.info.metadata["project_id"] == str(project.id)
    assert await projects.GetProject(project_service_pb2.GetProjectRequest(id=project.id))

    # Soft-deleting one task leaves a live one: still refused.
    await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=first.id))
    still = await expect_failure(
        projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=project.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert still.info.reason == "PROJECT_HAS_TASKS"

    # Only soft-deleted tasks left: the project goes, and takes them with it.
    await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=second.id))
    await projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=project.id))
    gone = await expect_failure(
        projects.GetProject(project_service_pb2.GetProjectRequest(id=project.id)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert gone.info.reason == "PROJECT_NOT_FOUND"
    for task in (first, second):
        purged = await expect_failure(
            tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id)), grpc.StatusCode.NOT_FOUND
        )
        assert purged.info.reason == "TASK_NOT_FOUND"


async def test_delete_project_hard_deletes_its_soft_deleted_task_trees(
    projects: ProjectStub, tasks: TaskStub, project: resources_pb2.Project
) -> None:
    root = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=root.id)
    grandchild = await create_task(tasks, project.id, parent_task_id=child.id)
    await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=root.id, force=True))

    await projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=project.id))

    for task in (root, child, grandchild):
        purged = await expect_failure(
            tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id)), grpc.StatusCode.NOT_FOUND
        )
        assert purged.info.reason == "TASK_NOT_FOUND"


async def test_a_refused_delete_project_purges_nothing(
    projects: ProjectStub, tasks: TaskStub, project: resources_pb2.Project
) -> None:
    deleted = await create_task(tasks, project.id)
    live = await create_task(tasks, project.id)
    deleted = await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=deleted.id))

    failure = await expect_failure(
        projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=project.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert failure.info.reason == "PROJECT_HAS_TASKS"
    assert await tasks.GetTask(task_service_pb2.GetTaskRequest(id=deleted.id)) == deleted
    assert await tasks.GetTask(task_service_pb2.GetTaskRequest(id=live.id)) == live


# --- Workers ----------------------------------------------------------------------------


async def test_create_worker_normalises_email_to_lower_case(workers: WorkerStub) -> None:
    local = unique("Ada.Lovelace")
    created = await new_worker(workers, f"  {local}@Example.COM ", name="  Ada  ")

    assert created.id > 0
    assert created.email == f"{local.lower()}@example.com"
    assert created.name == "Ada"
    assert created.create_time == created.update_time
    fetched = await workers.GetWorker(worker_service_pb2.GetWorkerRequest(id=created.id))
    assert fetched == created


async def test_list_workers_walks_every_worker_exactly_once(workers: WorkerStub) -> None:
    created = {(await new_worker(workers, unique_email())).id for _ in range(5)}

    pages = await all_worker_pages(workers, page_size=3)

    check_walk(pages, 3, created)


async def test_update_worker_changes_masked_fields_and_advances_update_time(
    workers: WorkerStub, worker: resources_pb2.Worker
) -> None:
    local = unique("Renamed")
    request = worker_service_pb2.UpdateWorkerRequest(
        worker=resources_pb2.Worker(id=worker.id, name="Ignored", email=f"{local}@EXAMPLE.com"),
        update_mask=FieldMask(paths=["email"]),
    )

    updated = await workers.UpdateWorker(request)

    assert updated.email == f"{local.lower()}@example.com"
    assert updated.name == worker.name
    assert updated.create_time == worker.create_time
    assert updated.update_time.ToNanoseconds() > worker.update_time.ToNanoseconds()
    assert await workers.GetWorker(worker_service_pb2.GetWorkerRequest(id=worker.id)) == updated


async def test_update_worker_name(workers: WorkerStub, worker: resources_pb2.Worker) -> None:
    updated = await workers.UpdateWorker(
        worker_service_pb2.UpdateWorkerRequest(
            worker=resources_pb2.Worker(id=worker.id, name="Grace Hopper"),
            update_mask=FieldMask(paths=["name"]),
        )
    )

    assert updated.name == "Grace Hopper"
    assert updated.email == worker.email


async def test_delete_worker_then_it_is_not_found(
    workers: WorkerStub, worker: resources_pb2.Worker
) -> None:
    await workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=worker.id))

    failure = await expect_failure(
        workers.GetWorker(worker_service_pb2.GetWorkerRequest(id=worker.id)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert failure.info.reason == "WORKER_NOT_FOUND"
    assert failure.info.metadata["worker_id"] == str(worker.id)
    again = await expect_failure(
        workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=worker.id)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert again.info.reason == "WORKER_NOT_FOUND"


async def test_duplicate_worker_email_is_already_exists(
    workers: WorkerStub, worker: resources_pb2.Worker
) -> None:
    failure = await expect_failure(
        new_worker(workers, worker.email), grpc.StatusCode.ALREADY_EXISTS
    )

    assert failure.info.reason == "WORKER_EMAIL_TAKEN"


async def test_worker_email_differing_only_in_case_is_already_exists(
    workers: WorkerStub, worker: resources_pb2.Worker
) -> None:
    failure = await expect_failure(
        new_worker(workers, worker.email.upper()), grpc.StatusCode.ALREADY_EXISTS
    )

    assert failure.info.reason == "WORKER_EMAIL_TAKEN"


async def test_changing_worker_email_to_a_taken_one_is_already_exists(
    workers: WorkerStub, worker: resources_pb2.Worker
) -> None:
    other = await new_worker(workers, unique_email())

    failure = await expect_failure(
        workers.UpdateWorker(
            worker_service_pb2.UpdateWorkerRequest(
                worker=resources_pb2.Worker(id=other.id, email=worker.email.upper()),
                update_mask=FieldMask(paths=["email"]),
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )

    assert failure.info.reason == "WORKER_EMAIL_TAKEN"
    assert await workers.GetWorker(worker_service_pb2.GetWorkerRequest(id=other.id)) == other


@pytest.mark.parametrize("round_", range(CONCURRENT_ROUNDS))
async def test_concurrent_create_worker_with_same_email_one_wins(
    workers: WorkerStub, round_: int
) -> None:
    email = unique_email(f"race{round_}")

    results = await asyncio.gather(
        new_worker(workers, email), new_worker(workers, email.upper()), return_exceptions=True
    )

    created = [r for r in results if isinstance(r, resources_pb2.Worker)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) == 1, results
    assert len(failed) == 1, results
    assert read_failure(failed[0], grpc.StatusCode.ALREADY_EXISTS).info.reason == (
        "WORKER_EMAIL_TAKEN"
    )


async def test_delete_worker_unassigns_their_tasks(
    workers: WorkerStub,
    tasks: TaskStub,
    project: resources_pb2.Project,
    worker: resources_pb2.Worker,
) -> None:
    other = await new_worker(workers, unique_email())
    assigned = [await create_task(tasks, project.id, assignee_id=worker.id) for _ in range(2)]
    kept = await create_task(tasks, project.id, assignee_id=other.id)

    await workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=worker.id))

    for task in assigned:
        fetched = await tasks.GetTask(
            task_service_pb2.GetTaskRequest(id=task.id, view=resources_pb2.TASK_VIEW_FULL)
        )
        assert not fetched.HasField("assignee_id")
        assert not fetched.HasField("assignee")
        assert fetched.title == task.title
        assert fetched.etag != task.etag  # unassigning is a write to the task
    still = await tasks.GetTask(task_service_pb2.GetTaskRequest(id=kept.id))
    assert still == kept


async def test_delete_worker_unassigns_their_soft_deleted_tasks_too(
    workers: WorkerStub,
    tasks: TaskStub,
    project: resources_pb2.Project,
    worker: resources_pb2.Worker,
) -> None:
    task = await create_task(tasks, project.id, assignee_id=worker.id)
    deleted = await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=task.id))

    await workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=worker.id))

    fetched = await tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id))
    assert not fetched.HasField("assignee_id")
    assert fetched.delete_time == deleted.delete_time  # still deleted
    assert fetched.etag != deleted.etag
