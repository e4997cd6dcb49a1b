"""FULL views through the real server: related resources, in a fixed number of statements."""

from __future__ import annotations

from taskmanager.v1 import resources_pb2, task_service_pb2
from tests.conftest import StatementCounter, create_task
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
