"""TaskCounts messages from counts of live tasks by status (FULL project/worker views)."""

from __future__ import annotations

from collections.abc import Mapping

from service.storage.models import TaskStatus
from taskmanager.v1 import resources_pb2

# The TaskCounts field of each status.
_FIELDS = {
    TaskStatus.PENDING: "pending",
    TaskStatus.IN_PROGRESS: "in_progress",
    TaskStatus.BLOCKED: "blocked",
    TaskStatus.DONE: "done",
    TaskStatus.CANCELLED: "cancelled",
}


def task_counts_to_message(counts: Mapping[TaskStatus, int]) -> resources_pb2.TaskCounts:
    """The API form of counts by status; statuses without tasks are 0."""
    return resources_pb2.TaskCounts(
        **{field: counts.get(status, 0) for status, field in _FIELDS.items()}
    )
