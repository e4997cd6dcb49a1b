"""ListProjectEvents and ListWorkerEvents through the real server: history for every resource."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from service.runtime.server import TaskServer
from service.settings import Settings
from service.storage.models import Project, Worker, utc_now
from service.storage.purge import purge
from taskmanager.v1 import project_service_pb2, resources_pb2, task_service_pb2, worker_service_pb2
from tests.conftest import create_task, unique
from tests.rpc_errors import expect_failure
from tests.safe_writes import (
    DEADLINE,
    MISSING_ID,
    Projects,
    Workers,
    actor,
    changed_fields,
    new_project,
    new_worker,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def project_events(
    projects: Projects, project_id: int, page_size: int = 0
) -> list[list[resources_pb2.AuditEvent]]:
    """Every page of a project's history."""
    request = project_service_pb2.ListProjectEventsRequest(
        project_id=project_id, page_size=page_size
    )
    pages = []
    while True:
        response = await projects.ListProjectEvents(request, timeout=DEADLINE)
        pages.append(list(response.events))
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token


async def worker_events(
    workers: Workers, worker_id: int, page_size: int = 0
) -> list[list[resources_pb2.AuditEvent]]:
    """Every page of a worker's history."""
    request = worker_service_pb2.ListWorkerEventsRequest(worker_id=worker_id, page_size=page_size)
    pages = []
    while True:
        response = await workers.ListWorkerEvents(request, timeout=DEADLINE)
        pages.append(list(response.events))
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token


async def test_a_projects_history_is_its_writes_oldest_first_even_after_delete(
    projects: Projects,
) -> None:
    created = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name=unique("history")), metadata=actor("ann")
    )
    renamed = unique("renamed")
    await projects.UpdateProject(
        project_service_pb2.UpdateProjectRequest(
            project=resources_pb2.Project(id=created.id, name=renamed),
            update_mask=FieldMask(paths=["name"]),
        ),
        metadata=actor("ben"),
    )
    await projects.DeleteProject(
        project_service_pb2.DeleteProjectRequest(id=created.id), metadata=actor("cy")
    )

    [events] = await project_events(projects, created.id)

    assert [(e.action, e.actor, e.entity_type, e.entity_id) for e in events] == [
        ("create", "ann", "project", created.id),
        ("update", "ben", "project", created.id),
        ("delete", "cy", "project", created.id),
    ]
    assert changed_fields(events[1]) == {"name": (created.name, renamed)}
    assert events[0].id < events[1].id < events[2].id


async def test_a_workers_history_pages_like_list_task_events(workers: Workers) -> None:
    worker = await new_worker(workers)
    for index in range(4):
        await workers.UpdateWorker(
            worker_service_pb2.UpdateWorkerRequest(
                worker=resources_pb2.Worker(id=worker.id, name=f"name {index}"),
                update_mask=FieldMask(paths=["name"]),
            )
        )
    await workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=worker.id))

    pages = await worker_events(workers, worker.id, page_size=2)

    assert [len(page) for page in pages] == [2, 2, 2]
    actions = [event.action for page in pages for event in page]
    assert actions == ["create", "update", "update", "update", "update", "delete"]
    assert [event.entity_id for page in pages for event in page] == [worker.id] * 6


async def test_histories_never_mix_entity_types(
    projects: Projects, workers: Workers, server: TaskServer
) -> None:
    """A project and a worker with the same id each see only their own events."""
    project, worker = await new_project(projects), await new_worker(workers)
    same_id = max(project.id, worker.id) + 1_000_000
    await _insert(
        server, Project(id=same_id, name=unique("p"), create_time=utc_now(), update_time=utc_now())
    )
    await _insert(
        server,
        Worker(
            id=same_id,
            name="w",
            email=f"{unique('w')}@example.com",
            create_time=utc_now(),
            update_time=utc_now(),
        ),
    )
    await projects.DeleteProject(project_service_pb2.DeleteProjectRequest(id=same_id))
    await workers.UpdateWorker(
        worker_service_pb2.UpdateWorkerRequest(
            worker=resources_pb2.Worker(id=same_id, name="renamed"),
            update_mask=FieldMask(paths=["name"]),
        )
    )
    assert [[e.action for e in page] for page in await project_events(projects, same_id)] == [
        ["delete"]
    ]
    assert [[e.action for e in page] for page in await worker_events(workers, same_id)] == [
        ["update"]
    ]


async def test_an_existing_resource_without_recorded_history_is_an_empty_page(
    projects: Projects, server: TaskServer
) -> None:
    """Rows older than the audit trail (or written around it) exist: no NOT_FOUND."""
    unaudited = Project(name=unique("old"), create_time=utc_now(), update_time=utc_now())
    await _insert(server, unaudited)
    assert await project_events(projects, unaudited.id or 0) == [[]]


@pytest.mark.parametrize("service", ["projects", "workers"])
async def test_an_id_with_neither_resource_nor_history_is_not_found(
    projects: Projects, workers: Workers, service: str
) -> None:
    call: Any = (
        projects.ListProjectEvents(
            project_service_pb2.ListProjectEventsRequest(project_id=MISSING_ID)
        )
        if service == "projects"
        else workers.ListWorkerEvents(
            worker_service_pb2.ListWorkerEventsRequest(worker_id=MISSING_ID)
        )
    )
    failure = await expect_failure(call, grpc.StatusCode.NOT_FOUND)
    kind = service[:-1]
    assert failure.info.reason == f"{kind.upper()}_NOT_FOUND"
    assert failure.info.metadata[f"{kind}_id"] == str(MISSING_ID)


async def test_bad_ids_and_page_sizes_are_invalid_argument(
    projects: Projects, workers: Workers
) -> None:
    failure = await expect_failure(
        projects.ListProjectEvents(
            project_service_pb2.ListProjectEventsRequest(project_id=0, page_size=-1)
        ),
        INVALID,
    )
    assert failure.fields == ["project_id", "page_size"]
    failure = await expect_failure(
        workers.ListWorkerEvents(worker_service_pb2.ListWorkerEventsRequest(worker_id=-3)),
        INVALID,
    )
    assert failure.fields == ["worker_id"]


async def test_page_tokens_are_bound_to_the_resource_and_the_method(
    projects: Projects, workers: Workers
) -> None:
    project, other = await new_project(projects), await new_project(projects)
    for name in ("a", "b"):
        await projects.UpdateProject(
            project_service_pb2.UpdateProjectRequest(
                project=resources_pb2.Project(id=project.id, description=name),
                update_mask=FieldMask(paths=["description"]),
            )
        )
    first = await projects.ListProjectEvents(
        project_service_pb2.ListProjectEventsRequest(project_id=project.id, page_size=1)
    )
    token = first.next_page_token
    calls = [
        projects.ListProjectEvents(
            project_service_pb2.ListProjectEventsRequest(project_id=other.id, page_token=token)
        ),
        workers.ListWorkerEvents(
            worker_service_pb2.ListWorkerEventsRequest(worker_id=project.id, page_token=token)
        ),
    ]
    for call in calls:
        failure = await expect_failure(call, INVALID)
        assert failure.info.reason == "INVALID_PAGE_TOKEN"


async def _insert(server: TaskServer, entity: Any) -> None:
    """A row written around the API (so without audit events)."""
    async with server.deps.session_factory() as session:
        session.add(entity)
        await session.commit()


async def test_a_purged_tasks_history_is_still_readable(
    tasks: Any, project: resources_pb2.Project, database_url: str
) -> None:
    created = await create_task(tasks, project.id)
    await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=created.id))
    await purge(Settings(database_url=database_url), task_retention=timedelta(0))
    await expect_failure(
        tasks.GetTask(task_service_pb2.GetTaskRequest(id=created.id)), grpc.StatusCode.NOT_FOUND
    )

    response = await tasks.ListTaskEvents(
        task_service_pb2.ListTaskEventsRequest(task_id=created.id)
    )

    assert [event.action for event in response.events] == ["create", "delete"]


async def test_a_deleted_resources_id_and_history_are_never_handed_to_a_new_one(
    workers: Workers,
) -> None:
    """SQLite too: the newest worker deleted, the next one gets another id (AUTOINCREMENT)."""
    newest = await new_worker(workers)
    await workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=newest.id))
    successor = await new_worker(workers)

    assert successor.id > newest.id
    [[create]] = await worker_events(workers, successor.id)
    assert (create.action, create.entity_id) == ("create", successor.id)
    [old] = await worker_events(workers, newest.id)
    assert [event.action for event in old] == ["create", "delete"]
