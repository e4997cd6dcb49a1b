"""Audit event values read in API terms (enum names, RFC 3339 times), old events included."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from service.api.mapping.audit import event_to_message
from service.runtime.server import TaskServer
from service.storage.models import AuditEvent, utc_now
from taskmanager.v1 import resources_pb2
from tests.conftest import create_task
from tests.safe_writes import (
    Tasks,
    changed_fields,
    delete_task,
    task_events,
    update_task,
)

DONE, HIGH = resources_pb2.TASK_STATUS_DONE, resources_pb2.TASK_PRIORITY_HIGH


async def test_status_and_priority_read_as_the_enum_names_clients_send(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, status=DONE, priority=HIGH)
    await update_task(
        tasks,
        resources_pb2.Task(
            id=created.id,
            status=resources_pb2.TASK_STATUS_BLOCKED,
            priority=resources_pb2.TASK_PRIORITY_URGENT,
        ),
    )

    create, update = await task_events(tasks, created.id)

    assert changed_fields(create)["status"] == (None, "TASK_STATUS_DONE")
    assert changed_fields(create)["priority"] == (None, "TASK_PRIORITY_HIGH")
    assert changed_fields(update) == {
        "status": ("TASK_STATUS_DONE", "TASK_STATUS_BLOCKED"),
        "priority": ("TASK_PRIORITY_HIGH", "TASK_PRIORITY_URGENT"),
    }


async def test_times_read_as_rfc3339_like_timestamps_in_json(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    due = Timestamp(seconds=1_900_000_000, nanos=5_000)
    created = await create_task(tasks, project.id, due_time=due)
    deleted = await delete_task(tasks, created.id)

    create, delete = await task_events(tasks, created.id)

    assert changed_fields(create)["due_time"] == (None, due.ToJsonString())
    assert changed_fields(delete)["delete_time"] == (None, deleted.delete_time.ToJsonString())
    assert deleted.delete_time.ToJsonString().endswith("Z")


async def test_events_stored_before_read_the_same(
    tasks: Tasks, project: resources_pb2.Project, server: TaskServer
) -> None:
    """Rows as earlier versions wrote them (storage encodings) read in API terms too; a
    value this version does not know is shown as stored."""
    created = await create_task(tasks, project.id)
    old = AuditEvent(
        entity_type="task",
        entity_id=created.id,
        action="update",
        actor="legacy",
        event_time=utc_now(),
        changes={
            "status": {"old": "PENDING", "new": "ARCHIVED"},
            "priority": {"old": 2, "new": 4},
            "delete_time": {"old": None, "new": "2026-01-02T03:04:05.000006+00:00"},
            "title": {"old": "a", "new": "b"},
        },
    )
    async with server.deps.session_factory() as session:
        session.add(old)
        await session.commit()

    _, legacy = await task_events(tasks, created.id)

    assert changed_fields(legacy) == {
        "status": ("TASK_STATUS_PENDING", "ARCHIVED"),
        "priority": ("TASK_PRIORITY_MEDIUM", "TASK_PRIORITY_URGENT"),
        "delete_time": (None, "2026-01-02T03:04:05.000006Z"),
        "title": ("a", "b"),
    }


def _event(entity_type: str, changes: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        id=1,
        entity_type=entity_type,
        entity_id=2,
        action="update",
        actor="x",
        event_time=datetime(2026, 1, 1, tzinfo=UTC),
        changes=changes,
    )


def test_only_task_fields_are_translated() -> None:
    """A project or worker field that happens to be called `status` is left alone."""
    message = event_to_message(_event("project", {"status": {"old": "DONE", "new": 3}}))
    assert message.changes[0].old_value.string_value == "DONE"
    assert message.changes[0].new_value.number_value == 3
    message = event_to_message(_event("task", {"priority": {"old": True, "new": None}}))
    assert message.changes[0].old_value.bool_value is True
    assert message.changes[0].new_value.HasField("null_value")
