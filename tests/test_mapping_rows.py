"""The row fast path (BASIC view from plain rows) says exactly what the entity path says."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.api.mapping.tasks import add_task_rows, task_to_message
from service.storage.models import Task, TaskPriority, TaskStatus
from service.storage.repositories.tasks import BASIC_KEYS
from taskmanager.v1 import task_service_pb2

CREATED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _task(**overrides: object) -> Task:
    fields: dict[str, object] = {
        "id": 7,
        "project_id": 3,
        "title": "Write the row mapper",
        "description": "fast",
        "status": TaskStatus.BLOCKED,
        "priority": TaskPriority.URGENT,
        "tags": ["a", "b c"],
        "assignee_id": 11,
        "parent_task_id": 5,
        "create_time": CREATED,
        "update_time": CREATED.replace(second=9),
        "version": 4,
        "delete_time": None,
    }
    fields.update(overrides)
    return Task(**fields)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"assignee_id": None, "parent_task_id": None, "tags": []},
        {"delete_time": CREATED.replace(minute=30), "status": TaskStatus.DONE},
    ],
)
def test_rows_map_to_the_same_message_as_entities(overrides: dict[str, object]) -> None:
    task = _task(**overrides)
    # Rows carry the status as stored (plain text), as the database returns it.
    row = tuple(
        str(getattr(task, key)) if key == "status" else getattr(task, key) for key in BASIC_KEYS
    )
    response = task_service_pb2.ListTasksResponse()
    add_task_rows(response.tasks, [row, row])
    assert list(response.tasks) == [task_to_message(task), task_to_message(task)]
