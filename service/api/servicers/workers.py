"""WorkerService; deleting a worker unassigns its tasks and clears it as their creator."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from service.api.mapping.workers import (
    apply_worker_update,
    worker_filter_from,
    worker_from_message,
    worker_to_message,
)
from service.api.pagination import Pagination
from service.api.requests import check_create_worker, check_list_workers, check_update_worker
from service.api.servicers.dependencies import Dependencies
from service.api.servicers.history import WORKER_HISTORY
from service.api.servicers.resource import ResourceKind, StandardMethods
from service.storage.audit_snapshots import task_snapshot, worker_snapshot
from service.storage.database import UnitOfWork
from service.storage.keyset import int_field
from service.storage.models import Worker, utc_now
from taskmanager.v1 import resources_pb2, worker_service_pb2_grpc
from taskmanager.v1 import worker_service_pb2 as pb

Context = Any  # grpc.aio.ServicerContext


async def release_tasks(uow: UnitOfWork, worker_id: int) -> None:
    """Unassign a worker's tasks and clear it as their creator, through the ORM rather
    than ON DELETE SET NULL, so each task's version (etag) and update_time move and the
    change is audited."""
    now = utc_now()
    for task in await uow.tasks.referencing_worker(worker_id):
        before = task_snapshot(task)
        if task.assignee_id == worker_id:
            task.assignee_id = None
        if task.creator_id == worker_id:
            task.creator_id = None
        task.update_time = now
        uow.record("task", task.id, "update", before, task_snapshot(task))


WORKERS: ResourceKind[Worker, resources_pb2.Worker] = ResourceKind(
    name="worker",
    message_type=resources_pb2.Worker,
    repository=lambda uow: uow.workers,
    to_message=worker_to_message,
    from_message=worker_from_message,
    apply_update=apply_worker_update,
    snapshot=worker_snapshot,
    check_list=check_list_workers,
    list_filter=worker_filter_from,
    listing=Pagination(
        method="ListWorkers",
        order_fields={"id": int_field(Worker.id)},
        default_order="id",
        default_size=50,
        max_size=1000,
    ),
    view_enum=resources_pb2.WorkerView,
    full_view=resources_pb2.WORKER_VIEW_FULL,
    task_counts=lambda uow, ids: uow.workers.task_counts(ids),
    before_delete=release_tasks,
)


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    """Workers: the people or agents tasks are assigned to."""

    def __init__(self, deps: Dependencies) -> None:
        self.methods = StandardMethods(deps, WORKERS)

    async def CreateWorker(
        self, request: pb.CreateWorkerRequest, context: Context
    ) -> resources_pb2.Worker:
        check_create_worker(request)
        return await self.methods.create("CreateWorker", request, request.worker, context)

    async def GetWorker(
        self, request: pb.GetWorkerRequest, context: Context
    ) -> resources_pb2.Worker:
        return await self.methods.get(request.id, request.view, context)

    async def ListWorkers(
        self, request: pb.ListWorkersRequest, context: Context
    ) -> pb.ListWorkersResponse:
        workers, token = await self.methods.list(request, context)
        return pb.ListWorkersResponse(workers=workers, next_page_token=token)

    async def UpdateWorker(
        self, request: pb.UpdateWorkerRequest, context: Context
    ) -> resources_pb2.Worker:
        fields = check_update_worker(request)
        return await self.methods.update(request.worker, fields, context)

    async def ListWorkerEvents(
        self, request: pb.ListWorkerEventsRequest, context: Context
    ) -> pb.ListWorkerEventsResponse:
        events, token = await WORKER_HISTORY.page(self.methods.deps, request, context)
        return pb.ListWorkerEventsResponse(events=events, next_page_token=token)

    async def DeleteWorker(
        self, request: pb.DeleteWorkerRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.methods.delete(request.id, request.etag, context)
        return empty_pb2.Empty()
