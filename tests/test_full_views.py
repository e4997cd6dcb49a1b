"""FULL views through the real server: related resources, in a fixed number of statements."""

from __future__ import annotations

from typing import Any

import grpc

from taskmanager.v1 import (
    project_service_pb2,
    resources_pb2,
    task_service_pb2,
    worker_service_pb2,
)
from tests.conftest import StatementCounter, create_task
from tests.rpc_errors import expect_failure
from tests.safe_writes import DEADLINE, Projects, Tasks, Workers, new_project, new_worker

FULL = resources_pb2.TASK_VIEW_FULL


def without_relations(task: resources_pb2.Task) -> resources_pb2.Task:
    """The task's own fields: what the BASIC view shows."""
    copy = resources_pb2.Task()
    copy.CopyFrom(task)
    for name in ("project", "creator", "assignee", "subtasks"):
        copy.ClearField(name)  # type: ignore[arg-type]
    return copy


# --- tasks --------------------------------------------------------------------------------


async def test_full_task_carries_its_project_and_creator_everywhere(
    tasks: Tasks, projects: Projects, workers: Workers
) -> None:
    project = await new_project(projects)
    creator, assignee = await new_worker(workers), await new_worker(workers)
    created = await create_task(tasks, project.id, creator_id=creator.id, assignee_id=assignee.id)

    got = await tasks.GetTask(task_service_pb2.GetTaskRequest(id=created.id, view=FULL))
    listed = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=project.id, view=FULL)
    )
    streamed = [
        task
        async for batch in tasks.StreamTasks(
            task_service_pb2.StreamTasksRequest(project_id=project.id, view=FULL)
        )
        for task in batch.tasks
    ]
    for task in (got, *listed.tasks, *streamed):
        assert task.project == project
        assert task.creator == creator
        assert task.assignee == assignee
        assert without_relations(task) == created


async def test_basic_task_has_no_related_resources(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id, creator_id=worker.id)
    got = await tasks.GetTask(task_service_pb2.GetTaskRequest(id=created.id))
    assert not got.HasField("project")
    assert not got.HasField("creator")
    assert got.creator_id == worker.id


async def test_list_full_view_statements_do_not_grow_with_projects_and_creators(
    tasks: Tasks, projects: Projects, workers: Workers, statements: StatementCounter
) -> None:
    """Each task of the page in its own project with its own creator and assignee."""
    creators = [await new_worker(workers) for _ in range(12)]
    owned = []
    for creator in creators:
        project = await new_project(projects)
        owned.append(
            await create_task(tasks, project.id, creator_id=creator.id, assignee_id=creator.id)
        )
    wanted = [task.id for task in owned]

    async def full_page(size: int) -> tuple[int, list[resources_pb2.Task]]:
        """The newest `size` tasks (those just created) in the FULL view, and its statements."""
        statements.statements.clear()
        response = await tasks.ListTasks(
            task_service_pb2.ListTasksRequest(page_size=size, view=FULL), timeout=DEADLINE
        )
        return statements.count, list(response.tasks)

    small_count, small = await full_page(2)
    large_count, large = await full_page(len(wanted))
    assert [task.id for task in large] == wanted[::-1]
    assert [task.id for task in small] == wanted[::-1][:2]
    assert {task.project.id for task in large} == {task.project_id for task in owned}
    assert all(task.creator.id == task.creator_id for task in large)
    assert large_count == small_count == 2, statements.statements


# --- projects and workers: counts of live tasks by status -----------------------------------

PENDING, IN_PROGRESS = resources_pb2.TASK_STATUS_PENDING, resources_pb2.TASK_STATUS_IN_PROGRESS
BLOCKED, DONE = resources_pb2.TASK_STATUS_BLOCKED, resources_pb2.TASK_STATUS_DONE
CANCELLED = resources_pb2.TASK_STATUS_CANCELLED
PROJECT_FULL, WORKER_FULL = resources_pb2.PROJECT_VIEW_FULL, resources_pb2.WORKER_VIEW_FULL


def counts(**by_status: int) -> resources_pb2.TaskCounts:
    return resources_pb2.TaskCounts(**by_status)


async def get_project(projects: Projects, project_id: int, view: int) -> resources_pb2.Project:
    found: resources_pb2.Project = await projects.GetProject(
        project_service_pb2.GetProjectRequest(id=project_id, view=view), timeout=DEADLINE
    )
    return found


async def get_worker(workers: Workers, worker_id: int, view: int) -> resources_pb2.Worker:
    found: resources_pb2.Worker = await workers.GetWorker(
        worker_service_pb2.GetWorkerRequest(id=worker_id, view=view), timeout=DEADLINE
    )
    return found


async def test_full_project_counts_its_live_tasks_by_status(
    tasks: Tasks, projects: Projects, workers: Workers
) -> None:
    project, other = await new_project(projects), await new_project(projects)
    worker = await new_worker(workers)
    for status in (PENDING, PENDING, IN_PROGRESS, DONE, DONE, DONE, CANCELLED):
        await create_task(tasks, project.id, status=status, assignee_id=worker.id)
    deleted = await create_task(tasks, project.id, status=BLOCKED)
    await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=deleted.id))
    await create_task(tasks, other.id, status=BLOCKED)

    full = await get_project(projects, project.id, PROJECT_FULL)

    assert full.task_counts == counts(pending=2, in_progress=1, done=3, cancelled=1)
    full.ClearField("task_counts")
    assert full == project
    assert (await get_project(projects, other.id, PROJECT_FULL)).task_counts == counts(blocked=1)
    for view in (resources_pb2.PROJECT_VIEW_BASIC, resources_pb2.PROJECT_VIEW_UNSPECIFIED):
        assert not (await get_project(projects, project.id, view)).HasField("task_counts")


async def test_full_project_without_tasks_has_all_counts_zero(projects: Projects) -> None:
    project = await new_project(projects)
    full = await get_project(projects, project.id, PROJECT_FULL)
    assert full.HasField("task_counts")
    assert full.task_counts == counts()


async def test_full_worker_counts_the_live_tasks_assigned_to_it(
    tasks: Tasks, projects: Projects, workers: Workers
) -> None:
    first, second = await new_project(projects), await new_project(projects)
    worker, other = await new_worker(workers), await new_worker(workers)
    await create_task(tasks, first.id, assignee_id=worker.id, status=IN_PROGRESS)
    await create_task(tasks, second.id, assignee_id=worker.id, status=IN_PROGRESS)
    await create_task(tasks, second.id, assignee_id=worker.id, status=BLOCKED)
    await create_task(tasks, second.id, creator_id=worker.id, assignee_id=other.id)
    gone = await create_task(tasks, first.id, assignee_id=worker.id)
    await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=gone.id))

    full = await get_worker(workers, worker.id, WORKER_FULL)

    assert full.task_counts == counts(in_progress=2, blocked=1)
    assert (await get_worker(workers, other.id, WORKER_FULL)).task_counts == counts(pending=1)
    assert not (await get_worker(workers, worker.id, 0)).HasField("task_counts")


async def test_list_full_views_count_every_item_of_the_page(
    tasks: Tasks, projects: Projects, workers: Workers
) -> None:
    made = [await new_project(projects) for _ in range(3)]
    staff = [await new_worker(workers) for _ in range(3)]
    for index, (project, worker) in enumerate(zip(made, staff, strict=True)):
        for _ in range(index):
            await create_task(tasks, project.id, assignee_id=worker.id, status=DONE)

    listed = await projects.ListProjects(
        project_service_pb2.ListProjectsRequest(page_size=1000, view=PROJECT_FULL)
    )
    by_id = {project.id: project.task_counts for project in listed.projects}
    assert [by_id[project.id] for project in made] == [counts(), counts(done=1), counts(done=2)]
    staffed = await workers.ListWorkers(
        worker_service_pb2.ListWorkersRequest(page_size=1000, view=WORKER_FULL)
    )
    by_worker = {worker.id: worker.task_counts for worker in staffed.workers}
    assert [by_worker[worker.id] for worker in staff] == [counts(), counts(done=1), counts(done=2)]
    basic = await projects.ListProjects(project_service_pb2.ListProjectsRequest(page_size=5))
    assert not any(project.HasField("task_counts") for project in basic.projects)


async def test_full_project_and_worker_views_cost_two_statements_per_request_or_page(
    tasks: Tasks, projects: Projects, workers: Workers, statements: StatementCounter
) -> None:
    for _ in range(20):
        project, worker = await new_project(projects), await new_worker(workers)
        await create_task(tasks, project.id, assignee_id=worker.id)

    async def statements_of(call: Any) -> int:
        statements.statements.clear()
        await call
        return statements.count

    sizes = (2, 20)
    project_pages = [
        await statements_of(
            projects.ListProjects(
                project_service_pb2.ListProjectsRequest(page_size=size, view=PROJECT_FULL)
            )
        )
        for size in sizes
    ]
    worker_pages = [
        await statements_of(
            workers.ListWorkers(
                worker_service_pb2.ListWorkersRequest(page_size=size, view=WORKER_FULL)
            )
        )
        for size in sizes
    ]
    one_project = await statements_of(
        projects.GetProject(project_service_pb2.GetProjectRequest(id=project.id, view=2))
    )
    one_worker = await statements_of(
        workers.GetWorker(worker_service_pb2.GetWorkerRequest(id=worker.id, view=2))
    )
    # The rows, then one GROUP BY over all of them.
    assert project_pages == worker_pages == [2, 2], statements.statements
    assert one_project == one_worker == 2


async def test_unknown_project_or_worker_view_is_invalid_argument(
    projects: Projects, workers: Workers, project: resources_pb2.Project
) -> None:
    calls = [
        projects.GetProject(project_service_pb2.GetProjectRequest(id=project.id, view=9)),
        projects.ListProjects(project_service_pb2.ListProjectsRequest(view=9)),
        workers.GetWorker(worker_service_pb2.GetWorkerRequest(id=1, view=9)),
        workers.ListWorkers(worker_service_pb2.ListWorkersRequest(view=9)),
    ]
    for call in calls:
        failure = await expect_failure(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert failure.fields == ["view"]
