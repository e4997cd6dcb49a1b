"""SQL for the live tasks of projects or workers counted by status: one GROUP BY per page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from service.storage.models import Task, TaskStatus
from service.storage.repositories.base import Repository

# How many live tasks are in each status (statuses without tasks are left out).
TaskCounts = dict[TaskStatus, int]


async def live_task_counts(
    repository: Repository[Any], owner: Any, owner_ids: Sequence[int]
) -> dict[int, TaskCounts]:
    """Counts of live tasks by status for each of `owner_ids` (a task column: project_id or
    assignee_id): one statement however many owners, never one per row."""
    if not owner_ids:
        return {}
    statement = (
        select(owner, col(Task.status), func.count())
        .where(col(Task.delete_time).is_(None), repository.any_of(owner, list(owner_ids)))
        .group_by(owner, col(Task.status))
    )
    counts: dict[int, TaskCounts] = {}
    for owner_id, status, count in await repository.fetch_rows(statement):
        counts.setdefault(owner_id, {})[TaskStatus(status)] = int(count)
    return counts
