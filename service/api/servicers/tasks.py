"""TaskService."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from service.api.idempotency import create_once
from service.api.mapping.tasks import (
    apply_task_update,
    basic_task_message,
    new_task_from_message,
    task_filter_from,
    task_row_to_message,
    task_to_message,
)
from service.api.pagination import PageRequest
from service.api.requests import (
    TASK_MASK,
    check_batch_create_tasks,
    check_batch_get_tasks,
    check_create_task,
    check_immutable_unchanged,
    check_task_filter,
    check_update_task,
)
from service.api.servicers.dependencies import Dependencies, deadline_of, time_left
from service.api.servicers.history import TASK_HISTORY
from service.api.servicers.task_reads import (
    LIST_TASKS,
    STREAM_TASKS,
    add_task_messages,
    read_tasks,
    read_tasks_by_id,
)
from service.api.servicers.watch import TaskWatch
from service.api.validation import Violations, check_enum, check_id, require_id
from service.storage.audit_snapshots import task_snapshot
from service.storage.database import UnitOfWork
from service.storage.errors import (
    AlreadyExists,
    FailedPrecondition,
    Unavailable,
    at_index,
)
from service.storage.etags import check_etag
from service.storage.keyset import (
    Position,
)
from service.storage.models import NewTask, utc_now
from service.storage.repositories.base import Page
from service.storage.repositories.tasks import FULL_VIEW, parent_deleted
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from taskmanager.v1 import task_service_pb2 as pb

Context = Any  # grpc.aio.ServicerContext


async def _abandon(pending: asyncio.Future[Any] | None) -> None:
    """Cancel a read-ahead the stream no longer wants, and wait until it has stopped."""
    if pending is None:
        return
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await pending


class TaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    """Tasks: create, read, list, stream, update, delete."""

    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps
        self.watch = TaskWatch(deps)

    async def CreateTask(
        self, request: pb.CreateTaskRequest, context: Context
    ) -> resources_pb2.Task:
        check_create_task(request)
        async with self.deps.unit_of_work(context) as uow:

            async def create() -> resources_pb2.Task:
                return basic_task_message(await self._create(uow, request.task))

            return await create_once(uow, "CreateTask", request, resources_pb2.Task, create)

    async def BatchCreateTasks(
        self, request: pb.BatchCreateTasksRequest, context: Context
    ) -> pb.BatchCreateTasksResponse:
        check_batch_create_tasks(request)
        async with self.deps.unit_of_work(context) as uow:

            async def create_all() -> pb.BatchCreateTasksResponse:
                created: list[NewTask] = []
                for index, item in enumerate(request.requests):
                    parent = (
                        created[item.batch_parent_index]
                        if item.HasField("batch_parent_index")
                        else None
                    )
                    with at_index(index):
                        created.append(await self._create(uow, item.task, parent))
                return pb.BatchCreateTasksResponse(tasks=[basic_task_message(t) for t in created])

            return await create_once(
                uow, "BatchCreateTasks", request, pb.BatchCreateTasksResponse, create_all
            )

    async def _create(
        self, uow: UnitOfWork, message: resources_pb2.Task, parent: NewTask | None = None
    ) -> NewTask:
        task = new_task_from_message(message, utc_now())
        if parent is not None:
            task.parent_task_id = parent.id
        event = uow.audit_event("task", "create", None, task_snapshot(task))
        return await uow.tasks.create(task, event)

    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> resources_pb2.Task:
        violations = Violations()
        check_id(violations, "id", request.id)
        check_enum(violations, "view", request.view, resources_pb2.TaskView, allow_unspecified=True)
        violations.raise_if_any()
        if request.view != resources_pb2.TASK_VIEW_FULL:
            row = await self.deps.read(context, lambda uow: uow.tasks.get_row(request.id))
            return task_row_to_message(row)
        task = await self.deps.read(context, lambda uow: uow.tasks.get(request.id, FULL_VIEW))
        return task_to_message(task, request.view)

    async def BatchGetTasks(
        self, request: pb.BatchGetTasksRequest, context: Context
    ) -> pb.BatchGetTasksResponse:
        check_batch_get_tasks(request)
        found = await self.deps.read(
            context, lambda uow: read_tasks_by_id(uow, request.ids, request.view)
        )
        response = pb.BatchGetTasksResponse()
        add_task_messages(response.tasks, found, request.view)
        return response

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        page_request = LIST_TASKS.read(request, self.deps.page_tokens, check_task_filter(request))
        task_filter, after = task_filter_from(request, utc_now()), page_request.after
        page, read_at = await self.deps.read_at(
            context,
            lambda uow: read_tasks(uow, task_filter, page_request, after, request.view),
            page_request.read_at,
        )
        response = pb.ListTasksResponse(
            next_page_token=LIST_TASKS.token_after(
                self.deps.page_tokens, page_request, page.next_position, read_at
            ),
        )
        add_task_messages(response.tasks, page.items, request.view)
        return response

    async def StreamTasks(
        self, request: pb.StreamTasksRequest, context: Context
    ) -> AsyncIterator[pb.StreamTasksResponse]:
        stream = STREAM_TASKS.read(request, self.deps.page_tokens, check_task_filter(request))
        with self.deps.stream_open():
            async for response in self._stream_batches(request, stream, context):
                yield response

    async def _stream_batches(
        self, request: pb.StreamTasksRequest, stream: PageRequest, context: Context
    ) -> AsyncIterator[pb.StreamTasksResponse]:
        task_filter = task_filter_from(request, utc_now())
        remaining = time_left(deadline_of(context))
        read_from = self.deps.reader(context)

        async def read(
            after: Position | None, at: int | None, *, first: bool = False
        ) -> tuple[Page[Any], int | None]:
            # One short read per batch, holding an admission slot only while it runs:
            # no connection and no slot is held while the client reads. A read-ahead
            # may outlive the RPC until the stream is finalised, so it must not use the
            # context (only what was read from it above). Each batch is read where the
            # previous one's position is replayed.
            async with self.deps.admission.slot(remaining, bounded=first):
                return await read_from(
                    lambda uow: read_tasks(uow, task_filter, stream, after, request.view), at
                )

        # Read one batch ahead: the next query runs while gRPC flow control holds
        # the previous batch, and memory stays bounded by two batches.
        pending: asyncio.Future[tuple[Page[Any], int | None]] | None = asyncio.ensure_future(
            read(stream.after, stream.read_at, first=True)
        )
        try:
            while pending is not None:
                page, read_at = await pending
                pending = None
                if page.last_position is None:
                    return
                if page.more:
                    pending = asyncio.ensure_future(read(page.last_position, read_at))
                response = pb.StreamTasksResponse(
                    resume_token=STREAM_TASKS.token_after(
                        self.deps.page_tokens, stream, page.last_position, read_at
                    ),
                )
                add_task_messages(response.tasks, page.items, request.view)
                yield response
                if pending is not None and self.deps.shutting_down.is_set():
                    raise Unavailable(
                        "SERVER_SHUTTING_DOWN",
                        "server is shutting down; call again with the last resume_token",
                    )
        finally:
            await _abandon(pending)

    async def UpdateTask(
        self, request: pb.UpdateTaskRequest, context: Context
    ) -> resources_pb2.Task:
        fields = check_update_task(request)
        async with self.deps.unit_of_work(context) as uow:
            if "parent_task_id" in fields:
                # Tree lock before row lock, always in this order, or two opposite
                # moves deadlock (project_id is immutable, so an unlocked read is safe).
                await uow.tasks.lock_tree((await uow.tasks.get(request.task.id)).project_id)
            task = await uow.tasks.get(request.task.id, for_update=True)
            check_etag(task, request.task.etag, "task")
            check_immutable_unchanged(task, request.task, fields)
            if task.delete_time is not None:
                raise FailedPrecondition(
                    "TASK_DELETED", f"task {task.id} is deleted; undelete it first", task_id=task.id
                )
            if fields - TASK_MASK.immutable:
                before = task_snapshot(task)
                apply_task_update(task, request.task, fields, utc_now())
                if fields & {"assignee_id", "parent_task_id"}:
                    # Unchanged references stay valid: the foreign keys and the tree
                    # rules held them when they were set.
                    await uow.tasks.check_references(task)
                await uow.tasks.save(task)
                uow.record("task", task.id, "update", before, task_snapshot(task))
                await uow.commit()
        return task_to_message(task)

    async def DeleteTask(
        self, request: pb.DeleteTaskRequest, context: Context
    ) -> resources_pb2.Task:
        require_id("id", request.id)
        async with self.deps.unit_of_work(context) as uow:
            task = await uow.tasks.get(request.id, for_update=True)
            if task.delete_time is not None:
                raise uow.tasks.not_found(request.id)  # AIP-164: already deleted
            check_etag(task, request.etag, "task")
            subtree = await uow.tasks.live_descendants(request.id)
            if subtree and not request.force:
                raise FailedPrecondition(
                    "TASK_HAS_SUBTASKS",
                    f"task {task.id} still has subtasks; delete them first or set force",
                    task_id=task.id,
                )
            now = utc_now()
            for doomed in (task, *subtree):
                before = task_snapshot(doomed)
                doomed.delete_time, doomed.deleted_with_id = now, task.id
                uow.record("task", doomed.id, "delete", before, task_snapshot(doomed))
            await uow.tasks.save(task)
            await uow.commit()
        return task_to_message(task)

    async def UndeleteTask(
        self, request: pb.UndeleteTaskRequest, context: Context
    ) -> resources_pb2.Task:
        require_id("id", request.id)
        async with self.deps.unit_of_work(context) as uow:
            task = await uow.tasks.get(request.id, for_update=True)
            if task.delete_time is None:
                raise AlreadyExists(
                    "TASK_NOT_DELETED", f"task {task.id} is not deleted", task_id=task.id
                )
            check_etag(task, request.etag, "task")
            if task.parent_task_id is not None:
                parent = await uow.tasks.get(task.parent_task_id)
                if parent.delete_time is not None:
                    raise parent_deleted(parent, task_id=task.id)
            for restored in await uow.tasks.deleted_with(request.id) or [task]:
                before = task_snapshot(restored)
                restored.delete_time, restored.deleted_with_id = None, None
                uow.record("task", restored.id, "undelete", before, task_snapshot(restored))
            await uow.tasks.save(task)
            await uow.commit()
        return task_to_message(task)

    async def ListTaskEvents(
        self, request: pb.ListTaskEventsRequest, context: Context
    ) -> pb.ListTaskEventsResponse:
        events, token = await TASK_HISTORY.page(self.deps, request, context)
        return pb.ListTaskEventsResponse(events=events, next_page_token=token)

    async def WatchTasks(  # type: ignore[override]  # serialized responses: api/serialized.py
        self, request: pb.WatchTasksRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """The change feed (service/api/servicers/watch.py)."""
        async for response in self.watch.watch(request, context):
            yield response
