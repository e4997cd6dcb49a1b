"""What a list or stream of tasks, projects or workers can be narrowed by: plain values, no SQL.

Mapping builds these from requests; the repositories turn them into WHERE clauses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from service.storage.models import TaskPriority, TaskStatus


@dataclass(frozen=True)
class TimeBounds:
    """[start, end) on a timestamp column; None means unbounded."""

    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class ProjectFilter:
    """What a list of projects can be narrowed by."""

    name_contains: str = ""


@dataclass(frozen=True)
class WorkerFilter:
    """What a list of workers can be narrowed by; both ANDed."""

    email: str = ""  # as stored: trimmed, lower-cased
    name_contains: str = ""


@dataclass(frozen=True)
class TaskFilter:
    """Everything a list or stream of tasks can be narrowed by; all of it ANDed."""

    project_id: int | None = None
    statuses: tuple[TaskStatus, ...] = ()
    priorities: tuple[TaskPriority, ...] = ()
    assignee_id: int | None = None
    unassigned: bool = False
    parent_task_id: int | None = None
    top_level_only: bool = False
    tags: tuple[str, ...] = ()
    title_contains: str = ""
    create_time: TimeBounds = field(default_factory=TimeBounds)
    update_time: TimeBounds = field(default_factory=TimeBounds)
    show_deleted: bool = False
    creator_id: int | None = None
    due_time: TimeBounds = field(default_factory=TimeBounds)
    # Due before this time and neither DONE nor CANCELLED; None: no such filter.
    overdue_at: datetime | None = None
