"""Audit snapshots of entities, their differences, and AuditEvent messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2

from service.api.mapping.timestamps import to_timestamp
from service.storage.models import AnyTask, AuditEvent, Project, Worker
from taskmanager.v1 import resources_pb2

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


def _value(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int | float):
        message.number_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, list):
        message.list_value.extend(value)
    else:
        message.string_value = str(value)
    return message


def event_to_message(event: AuditEvent) -> resources_pb2.AuditEvent:
    """The API form of an audit event."""
    message = resources_pb2.AuditEvent(
        id=event.id or 0,
        entity_type=event.entity_type,
        entity_id=event.entity_id,
        action=event.action,
        actor=event.actor,
        changes=[
            resources_pb2.FieldChange(
                field=name, old_value=_value(change["old"]), new_value=_value(change["new"])
            )
            for name, change in event.changes.items()
        ],
    )
    to_timestamp(event.event_time, message.event_time)
    return message
