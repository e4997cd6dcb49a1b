"""How TaskService reads tasks: list and stream orderings, and the two views' read paths."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from service.api.mapping.tasks import add_task_rows, task_to_message
from service.api.pagination import PageRequest, Pagination
from service.storage.database import UnitOfWork
from service.storage.filters import TaskFilter
from service.storage.keyset import (
    Position,
    int_field,
    optional_time_field,
    text_field,
    time_field,
)
from service.storage.models import Task
from service.storage.repositories.base import Page
from service.storage.repositories.tasks import FULL_VIEW
from taskmanager.v1 import resources_pb2

LIST_TASKS = Pagination(
    method="ListTasks",
    order_fields={
        "create_time": time_field(Task.create_time),
        "update_time": time_field(Task.update_time),
        "priority": int_field(Task.priority),
        "title": text_field(Task.title),
        "due_time": optional_time_field(Task.due_time),
    },
    default_order="create_time desc",
    default_size=50,
    max_size=1000,
)
# Streams order only by immutable keys, so concurrent updates cannot move rows
# across the stream's position (no skips, no repeats).
STREAM_TASKS = Pagination(
    method="StreamTasks",
    order_fields={"create_time": time_field(Task.create_time), "id": int_field(Task.id)},
    default_order="create_time",
    default_size=500,
    max_size=5000,
    size_field="batch_size",
    token_field="resume_token",
)


def is_full(view: int) -> bool:
    """Whether `view` asks for the related resources too."""
    return view == resources_pb2.TASK_VIEW_FULL


async def read_tasks(
    uow: UnitOfWork,
    task_filter: TaskFilter,
    page: PageRequest,
    after: Position | None,
    view: int,
) -> Page[Any]:
    """A page of tasks: entities with relations for FULL, plain rows (faster) for BASIC."""
    if is_full(view):
        return await uow.tasks.list_page(task_filter, page.ordering, after, page.size, FULL_VIEW)
    return await uow.tasks.list_rows(task_filter, page.ordering, after, page.size)


async def read_tasks_by_id(uow: UnitOfWork, task_ids: Sequence[int], view: int) -> list[Any]:
    """Tasks by id in the order given (entities for FULL, rows for BASIC); NOT_FOUND
    naming the missing ids if any."""
    if is_full(view):
        return await uow.tasks.get_many(task_ids, FULL_VIEW)
    return await uow.tasks.get_rows(task_ids)


def add_task_messages(target: Any, items: Iterable[Any], view: int) -> None:
    """Append what read_tasks or read_tasks_by_id returned to a repeated Task field."""
    if is_full(view):
        target.extend(task_to_message(task, resources_pb2.TASK_VIEW_FULL) for task in items)
    else:
        add_task_rows(target, items)
