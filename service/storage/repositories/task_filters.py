"""SQL for task filters: a TaskFilter as WHERE conditions, for lists and streams alike."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, String, and_, cast, exists, func, literal, literal_column
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import col, select

from service.storage.filters import TaskFilter, TimeBounds
from service.storage.models import Task, TaskStatus
from service.storage.repositories.base import Repository


def task_conditions(repository: Repository[Any], f: TaskFilter) -> list[ColumnElement[bool]]:
    """The WHERE conditions (ANDed) of the tasks `f` selects."""
    conditions: list[ColumnElement[bool]] = []
    if not f.show_deleted:
        conditions.append(col(Task.delete_time).is_(None))
    if f.project_id is not None:
        conditions.append(col(Task.project_id) == f.project_id)
    if f.statuses:
        conditions.append(repository.any_of(col(Task.status), [s.value for s in f.statuses]))
    if f.priorities:
        conditions.append(repository.any_of(col(Task.priority), [int(p) for p in f.priorities]))
    if f.assignee_id is not None:
        conditions.append(col(Task.assignee_id) == f.assignee_id)
    if f.unassigned:
        conditions.append(col(Task.assignee_id).is_(None))
    if f.parent_task_id is not None:
        conditions.append(col(Task.parent_task_id) == f.parent_task_id)
    if f.top_level_only:
        conditions.append(col(Task.parent_task_id).is_(None))
    if f.creator_id is not None:
        conditions.append(col(Task.creator_id) == f.creator_id)
    if f.tags:
        conditions.append(_has_all_tags(repository, f.tags))
    if f.title_contains:
        conditions.append(repository.contains_text(col(Task.title), f.title_contains))
    conditions.extend(_within(col(Task.create_time), f.create_time))
    conditions.extend(_within(col(Task.update_time), f.update_time))
    conditions.extend(_within(col(Task.due_time), f.due_time))
    if f.overdue_at is not None:
        conditions.append(col(Task.due_time) < f.overdue_at)
        finished = [TaskStatus.DONE.value, TaskStatus.CANCELLED.value]
        conditions.append(col(Task.status).not_in(finished))
    return conditions


def _has_all_tags(repository: Repository[Any], tags: tuple[str, ...]) -> ColumnElement[bool]:
    column = Task.__table__.c.tags  # type: ignore[attr-defined]
    if repository.dialect == "postgresql":
        # JSONB containment, served by the GIN (jsonb_path_ops) index.
        # The value travels as JSON text (driver-ready for the raw row path).
        tags_json = literal(json.dumps(list(tags)), String())
        return column.op("@>")(cast(tags_json, JSONB))  # type: ignore[no-any-return]
    # SQLite has no containment operator: one json_each probe per tag.
    each = func.json_each(column).table_valued("value")
    return and_(
        *(
            exists(select(literal_column("1")).select_from(each).where(each.c.value == tag))
            for tag in tags
        )
    )


def _within(column: Any, bounds: TimeBounds) -> list[ColumnElement[bool]]:
    conditions = []
    if bounds.start is not None:
        conditions.append(column >= bounds.start)
    if bounds.end is not None:
        conditions.append(column < bounds.end)
    return conditions
