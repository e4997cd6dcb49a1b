"""Helpers shared by the safe-write tests: masks, etags, request ids, soft delete, audit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import func
from sqlmodel import col, select

from service.runtime.server import TaskServer
from service.storage.models import AuditEvent
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from tests.conftest import unique

Tasks = task_service_pb2_grpc.TaskServiceStub
Projects = project_service_pb2_grpc.ProjectServiceStub
Workers = worker_service_pb2_grpc.WorkerServiceStub

# A client-side deadline on every call: a server that never answers fails the test, not hangs it.
DEADLINE = 30.0
MISSING_ID = 9_000_000_000_000  # far beyond any id a test run creates


def new_request_id() -> str:
    """A fresh idempotency key (AIP-155)."""
    return str(uuid.uuid4())


def actor(name: str) -> tuple[tuple[str, str], ...]:
    """Request metadata naming the caller for the audit trail."""
    return (("x-actor", name),)


def nanos(message: Any, field: str) -> int:
    """A Timestamp field of a message in nanoseconds (0 when unset)."""
    return int(getattr(message, field).ToNanoseconds()) if message.HasField(field) else 0


# --- tasks ---------------------------------------------------------------------------------


async def get_task(tasks: Tasks, task_id: int) -> resources_pb2.Task:
    task: resources_pb2.Task = await tasks.GetTask(
        task_service_pb2.GetTaskRequest(id=task_id), timeout=DEADLINE
    )
    return task


async def update_task(
    tasks: Tasks,
    task: resources_pb2.Task,
    paths: Sequence[str] | None = None,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> resources_pb2.Task:
    """UpdateTask; `paths=None` sends no mask (the fields set in `task` are updated)."""
    request = task_service_pb2.UpdateTaskRequest(task=task)
    if paths is not None:
        request.update_mask.CopyFrom(FieldMask(paths=list(paths)))
    updated: resources_pb2.Task = await tasks.UpdateTask(
        request, timeout=DEADLINE, metadata=metadata
    )
    return updated


def update_task_call(
    tasks: Tasks, task: resources_pb2.Task, paths: Sequence[str] | None = None
) -> Any:
    """The UpdateTask call itself, for expect_failure."""
    request = task_service_pb2.UpdateTaskRequest(task=task)
    if paths is not None:
        request.update_mask.CopyFrom(FieldMask(paths=list(paths)))
    return tasks.UpdateTask(request, timeout=DEADLINE)


async def delete_task(
    tasks: Tasks, task_id: int, *, etag: str = "", force: bool = False
) -> resources_pb2.Task:
    deleted: resources_pb2.Task = await tasks.DeleteTask(
        task_service_pb2.DeleteTaskRequest(id=task_id, etag=etag, force=force), timeout=DEADLINE
    )
    return deleted


async def undelete_task(tasks: Tasks, task_id: int, *, etag: str = "") -> resources_pb2.Task:
    restored: resources_pb2.Task = await tasks.UndeleteTask(
        task_service_pb2.UndeleteTaskRequest(id=task_id, etag=etag), timeout=DEADLINE
    )
    return restored


async def list_tasks(
    tasks: Tasks, project_id: int, *, show_deleted: bool = False
) -> list[resources_pb2.Task]:
    """Every task of a project, walking all pages, in ListTasks order."""
    found: list[resources_pb2.Task] = []
    token = ""
    while True:
        page = await tasks.ListTasks(
            task_service_pb2.ListTasksRequest(
                project_id=project_id,
                page_size=1000,
                page_token=token,
                show_deleted=show_deleted,
                order_by="create_time",
            ),
            timeout=DEADLINE,
        )
        found.extend(page.tasks)
        token = page.next_page_token
        if not token:
            return found


async def list_task_ids(tasks: Tasks, project_id: int, *, show_deleted: bool = False) -> set[int]:
    return {task.id for task in await list_tasks(tasks, project_id, show_deleted=show_deleted)}


async def stream_task_ids(tasks: Tasks, project_id: int, *, show_deleted: bool = False) -> set[int]:
    request = task_service_pb2.StreamTasksRequest(
        project_id=project_id, show_deleted=show_deleted, batch_size=2
    )
    return {
        task.id
        async for response in tasks.StreamTasks(request, timeout=DEADLINE)
        for task in response.tasks
    }


# --- projects and workers ------------------------------------------------------------------


async def new_project(projects: Projects, **fields: Any) -> resources_pb2.Project:
    fields.setdefault("name", unique("project"))
    created: resources_pb2.Project = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(project=resources_pb2.Project(**fields)),
        timeout=DEADLINE,
    )
    return created


async def new_worker(workers: Workers, **fields: Any) -> resources_pb2.Worker:
    fields.setdefault("name", "Grace")
    fields.setdefault("email", f"{unique('grace')}@example.com")
    created: resources_pb2.Worker = await workers.CreateWorker(
        worker_service_pb2.CreateWorkerRequest(worker=resources_pb2.Worker(**fields)),
        timeout=DEADLINE,
    )
    return created


async def get_project(projects: Projects, project_id: int) -> resources_pb2.Project:
    project: resources_pb2.Project = await projects.GetProject(
        project_service_pb2.GetProjectRequest(id=project_id), timeout=DEADLINE
    )
    return project


async def get_worker(workers: Workers, worker_id: int) -> resources_pb2.Worker:
    worker: resources_pb2.Worker = await workers.GetWorker(
        worker_service_pb2.GetWorkerRequest(id=worker_id), timeout=DEADLINE
    )
    return worker


def update_project_call(
    projects: Projects, project: resources_pb2.Project, paths: Sequence[str] | None = None
) -> Any:
    request = project_service_pb2.UpdateProjectRequest(project=project)
    if paths is not None:
        request.update_mask.CopyFrom(FieldMask(paths=list(paths)))
    return projects.UpdateProject(request, timeout=DEADLINE)


def update_worker_call(
    workers: Workers, worker: resources_pb2.Worker, paths: Sequence[str] | None = None
) -> Any:
    request = worker_service_pb2.UpdateWorkerRequest(worker=worker)
    if paths is not None:
        request.update_mask.CopyFrom(FieldMask(paths=list(paths)))
    return workers.UpdateWorker(request, timeout=DEADLINE)


# --- audit trail ---------------------------------------------------------------------------


async def task_events(tasks: Tasks, task_id: int) -> list[resources_pb2.AuditEvent]:
    """A task's whole history through ListTaskEvents, every page."""
    events: list[resources_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await tasks.ListTaskEvents(
            task_service_pb2.ListTaskEventsRequest(task_id=task_id, page_token=token),
            timeout=DEADLINE,
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


async def stored_events(server: TaskServer, entity_type: str, entity_id: int) -> list[AuditEvent]:
    """Audit rows of any entity, read from the server's database (projects and workers
    have no ListEvents RPC)."""
    async with server.deps.session_factory() as session:
        result = await session.exec(
            select(AuditEvent)
            .where(
                col(AuditEvent.entity_type) == entity_type, col(AuditEvent.entity_id) == entity_id
            )
            .order_by(col(AuditEvent.id))
        )
        return list(result.all())


async def last_event_id(server: TaskServer) -> int:
    """The newest audit row's id (0 when there is none)."""
    async with server.deps.session_factory() as session:
        result = await session.exec(select(func.max(AuditEvent.id)))
        return int(result.one() or 0)


def changed_fields(event: resources_pb2.AuditEvent) -> dict[str, tuple[Any, Any]]:
    """{field: (old, new)} of an event, as plain Python values."""
    return {
        change.field: (_plain(change.old_value), _plain(change.new_value))
        for change in event.changes
    }


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number == int(number) else number
    return getattr(value, kind)


def rpc_code(outcome: BaseException | object) -> grpc.StatusCode | None:
    """The status code of a gathered outcome (None for a success)."""
    if isinstance(outcome, grpc.aio.AioRpcError):
        return outcome.code()
    if isinstance(outcome, BaseException):
        raise outcome
    return None
