"""Audit snapshots: the audited fields of an entity as JSON values, and what changed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.storage.models import AnyTask, Project, Worker

Snapshot = dict[str, Any]


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return list(value)
    return value


def task_snapshot(task: AnyTask) -> Snapshot:
    """The audited fields of a task, as JSON values."""
    fields = ("project_id", "title", "description", "status", "priority", "tags")
    snapshot = {name: _json(getattr(task, name)) for name in fields}
    snapshot["status"] = str(task.status)
    snapshot["priority"] = int(task.priority)
    snapshot["assignee_id"] = task.assignee_id
    snapshot["parent_task_id"] = task.parent_task_id
    snapshot["delete_time"] = _json(task.delete_time)
    snapshot["creator_id"] = task.creator_id
    snapshot["due_time"] = _json(task.due_time)
    return snapshot


def project_snapshot(project: Project) -> Snapshot:
    """The audited fields of a project."""
    return {"name": project.name, "description": project.description}


def worker_snapshot(worker: Worker) -> Snapshot:
    """The audited fields of a worker."""
    return {"name": worker.name, "email": worker.email}


def changes(before: Snapshot | None, after: Snapshot | None) -> dict[str, dict[str, Any]]:
    """Fields whose value differs, as {field: {"old": ..., "new": ...}}."""
    old, new = before or {}, after or {}
    return {
        name: {"old": old.get(name), "new": new.get(name)}
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    }
