"""Task message <-> Task entity, and list/stream requests -> TaskFilter."""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from datetime import datetime
from typing import Any

from service.api.mapping.projects import project_to_message
from service.api.mapping.timestamps import from_timestamp, from_timestamp_ceil, to_timestamp
from service.api.mapping.workers import worker_to_message
from service.storage.etags import etag_for, etag_of
from service.storage.filters import TaskFilter, TimeBounds
from service.storage.models import AnyTask, NewTask, Task, TaskPriority, TaskStatus
from taskmanager.v1 import resources_pb2, task_service_pb2

STATUS_TO_MESSAGE = {
    TaskStatus.PENDING: resources_pb2.TASK_STATUS_PENDING,
    TaskStatus.IN_PROGRESS: resources_pb2.TASK_STATUS_IN_PROGRESS,
    TaskStatus.BLOCKED: resources_pb2.TASK_STATUS_BLOCKED,
    TaskStatus.DONE: resources_pb2.TASK_STATUS_DONE,
    TaskStatus.CANCELLED: resources_pb2.TASK_STATUS_CANCELLED,
}
STATUS_FROM_MESSAGE = {number: status for status, number in STATUS_TO_MESSAGE.items()}
# TaskPriority numbers equal the API's enum numbers (LOW=1 .. URGENT=4).
PRIORITY_FROM_MESSAGE = {int(p): p for p in TaskPriority}

ListOrStream = task_service_pb2.ListTasksRequest | task_service_pb2.StreamTasksRequest


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Tags are stored trimmed, case preserved, in the order given."""
    return [tag.strip() for tag in tags]


def task_to_message(
    task: Task, view: resources_pb2.TaskView.ValueType = resources_pb2.TASK_VIEW_BASIC
) -> resources_pb2.Task:
    """The API form of a stored task; FULL adds the (eagerly loaded) project, assignee,
    creator and subtasks."""
    message = basic_task_message(task)
    if view == resources_pb2.TASK_VIEW_FULL:
        message.project.CopyFrom(project_to_message(task.project))
        if task.assignee is not None:
            message.assignee.CopyFrom(worker_to_message(task.assignee))
        if task.creator is not None:
            message.creator.CopyFrom(worker_to_message(task.creator))
        message.subtasks.extend(
            task_to_message(subtask) for subtask in task.subtasks if subtask.delete_time is None
        )
    return message


def basic_task_message(task: AnyTask) -> resources_pb2.Task:
    """The BASIC view of a task's columns (a stored Task, or a NewTask once inserted)."""
    message = resources_pb2.Task(
        id=task.id or 0,
        project_id=task.project_id,
        title=task.title,
        description=task.description,
        status=STATUS_TO_MESSAGE[TaskStatus(task.status)],
        priority=int(task.priority),  # type: ignore[arg-type]
        tags=task.tags,
        assignee_id=task.assignee_id,
        parent_task_id=task.parent_task_id,
        etag=etag_of(task),
        creator_id=task.creator_id,
    )
    to_timestamp(task.create_time, message.create_time)
    to_timestamp(task.update_time, message.update_time)
    if task.delete_time is not None:
        to_timestamp(task.delete_time, message.delete_time)
    if task.due_time is not None:
        to_timestamp(task.due_time, message.due_time)
    return message


def add_task_rows(target: Any, rows: Iterable[Sequence[Any]]) -> None:
    """Append the BASIC view of rows of repositories.tasks.BASIC_COLUMNS to `target`.

    `target` is a repeated Task field; messages are built in place (no ORM object,
    no intermediate message to copy), the hot path of lists and streams.
    """
    add = target.add
    for row in rows:
        _set_times(add(**_basic_fields(row)), row)


def task_row_to_message(row: Sequence[Any]) -> resources_pb2.Task:
    """The BASIC view of one row of repositories.tasks.BASIC_COLUMNS."""
    message = resources_pb2.Task(**_basic_fields(row))
    _set_times(message, row)
    return message


def _basic_fields(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0],
        "project_id": row[1],
        "title": row[2],
        "description": row[3],
        "status": STATUS_TO_MESSAGE[row[4]],
        "priority": row[5],
        "tags": row[6],
        "assignee_id": row[7],
        "parent_task_id": row[8],
        "etag": etag_for(row[11]),
        "creator_id": row[13],
    }


def _set_times(message: resources_pb2.Task, row: Sequence[Any]) -> None:
    to_timestamp(row[9], message.create_time)
    to_timestamp(row[10], message.update_time)
    if row[12] is not None:
        to_timestamp(row[12], message.delete_time)
    if row[14] is not None:
        to_timestamp(row[14], message.due_time)


def new_task_from_message(message: resources_pb2.Task, now: datetime) -> NewTask:
    """A new task from a create request: defaults PENDING and MEDIUM; output-only ignored."""
    return NewTask(
        project_id=message.project_id,
        title=message.title.strip(),
        description=message.description,
        status=STATUS_FROM_MESSAGE.get(message.status, TaskStatus.PENDING),
        priority=PRIORITY_FROM_MESSAGE.get(message.priority, TaskPriority.MEDIUM),
        tags=normalise_tags(message.tags),
        assignee_id=message.assignee_id if message.HasField("assignee_id") else None,
        parent_task_id=message.parent_task_id if message.HasField("parent_task_id") else None,
        create_time=now,
        update_time=now,
        creator_id=message.creator_id if message.HasField("creator_id") else None,
        due_time=_due_time(message),
    )


def _due_time(message: resources_pb2.Task) -> datetime | None:
    return from_timestamp(message.due_time) if message.HasField("due_time") else None


def apply_task_update(
    task: Task, message: resources_pb2.Task, fields: Set[str], now: datetime
) -> None:
    """Copy the masked fields onto `task`; an unset optional id in the mask clears it."""
    if "title" in fields:
        task.title = message.title.strip()
    if "description" in fields:
        task.description = message.description
    if "status" in fields:
        task.status = STATUS_FROM_MESSAGE[message.status]
    if "priority" in fields:
        task.priority = PRIORITY_FROM_MESSAGE[message.priority]
    if "tags" in fields:
        task.tags = normalise_tags(message.tags)  # a new list: SQLAlchemy sees reassignment only
    if "assignee_id" in fields:
        task.assignee_id = message.assignee_id if message.HasField("assignee_id") else None
    if "parent_task_id" in fields:
        task.parent_task_id = message.parent_task_id if message.HasField("parent_task_id") else None
    if "due_time" in fields:
        task.due_time = _due_time(message)
    task.update_time = now


def task_filter_from(request: ListOrStream, now: datetime) -> TaskFilter:
    """The filter fields of a ListTasks or StreamTasks request (validated beforehand);
    `now` is when `overdue` is judged."""
    return TaskFilter(
        project_id=request.project_id or None,
        # Each value once (dict keeps order): a request may repeat one a million times,
        # and SQLite takes at most 32,766 bound parameters per statement.
        statuses=tuple(dict.fromkeys(STATUS_FROM_MESSAGE[s] for s in request.statuses)),
        priorities=tuple(dict.fromkeys(PRIORITY_FROM_MESSAGE[p] for p in request.priorities)),
        assignee_id=request.assignee_id if request.HasField("assignee_id") else None,
        unassigned=request.unassigned,
        parent_task_id=request.parent_task_id if request.HasField("parent_task_id") else None,
        top_level_only=request.top_level_only,
        tags=tuple(normalise_tags(request.tags)),
        title_contains=request.title_contains,
        create_time=_bounds(request, "create_time"),
        update_time=_bounds(request, "update_time"),
        show_deleted=request.show_deleted,
        creator_id=request.creator_id if request.HasField("creator_id") else None,
        due_time=_bounds(request, "due_time"),
        overdue_at=now if request.overdue else None,
    )


def _bounds(request: ListOrStream, name: str) -> TimeBounds:
    if not request.HasField(name):  # type: ignore[arg-type]
        return TimeBounds()
    time_range: resources_pb2.TimeRange = getattr(request, name)
    return TimeBounds(
        start=_bound(time_range, "start_time"),
        end=_bound(time_range, "end_time"),
    )


def _bound(time_range: resources_pb2.TimeRange, name: str) -> datetime | None:
    if not time_range.HasField(name):  # type: ignore[arg-type]
        return None
    return from_timestamp_ceil(getattr(time_range, name))
