"""WatchTasks messages from feed events, and the request's filter."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from service.api.mapping.tasks import (
    PRIORITY_FROM_MESSAGE,
    STATUS_FROM_MESSAGE,
    normalise_tags,
    task_row_to_message,
    task_to_message,
)
from service.api.mapping.timestamps import to_timestamp
from service.storage.feed_events import FeedEvent, FeedPosition
from service.storage.feed_watcher import Chunk
from service.storage.filters import TaskFilter
from service.storage.models import Task
from taskmanager.v1 import resources_pb2, task_service_pb2

pb = task_service_pb2

EVENT_TYPES = {
    "create": pb.TASK_EVENT_TYPE_CREATED,
    "update": pb.TASK_EVENT_TYPE_UPDATED,
    "delete": pb.TASK_EVENT_TYPE_DELETED,
    "undelete": pb.TASK_EVENT_TYPE_UNDELETED,
}
# Encodes a feed position as a cursor (api.cursors.FeedCursors.encode).
CursorOf = Callable[[FeedPosition], str]


def watch_filter_from(request: task_service_pb2.WatchTasksRequest) -> TaskFilter:
    """The filter fields of a WatchTasks request (validated beforehand)."""
    return TaskFilter(
        project_id=request.project_id or None,
        statuses=tuple(STATUS_FROM_MESSAGE[s] for s in request.statuses),
        priorities=tuple(PRIORITY_FROM_MESSAGE[p] for p in request.priorities),
        assignee_id=request.assignee_id if request.HasField("assignee_id") else None,
        unassigned=request.unassigned,
        parent_task_id=request.parent_task_id if request.HasField("parent_task_id") else None,
        top_level_only=request.top_level_only,
        tags=tuple(normalise_tags(request.tags)),
        creator_id=request.creator_id if request.HasField("creator_id") else None,
        show_deleted=request.show_deleted,
    )


def change_message(
    event: FeedEvent, no_longer_matches: bool, cursor_of: CursorOf | None
) -> task_service_pb2.TaskEvent:
    """The BASIC-view message of a change; made once per event, cursor and flag, and
    shared by every stream it goes to (FeedEvent.memo). No cursor when `cursor_of` is None."""
    key = (no_longer_matches, cursor_of is not None)
    message: task_service_pb2.TaskEvent | None = event.memo.get(key)
    if message is None:
        message = event.memo[key] = _change_message(event, no_longer_matches, cursor_of)
    return message


def _change_message(
    event: FeedEvent, no_longer_matches: bool, cursor_of: CursorOf | None
) -> task_service_pb2.TaskEvent:
    message = pb.TaskEvent(
        type=EVENT_TYPES[event.action],
        task=task_row_to_message(event.row),
        actor=event.actor,
        no_longer_matches=no_longer_matches,
    )
    message.changed_fields.paths.extend(event.changed_fields)
    to_timestamp(event.commit_time, message.commit_time)
    if cursor_of is not None:
        cursor = event.memo.get("cursor")
        if cursor is None:
            cursor = event.memo["cursor"] = cursor_of(event.position)
        message.cursor = cursor
    return message


def snapshot_message(row: Sequence[Any]) -> task_service_pb2.TaskEvent:
    """A task of the initial snapshot, from a row of the BASIC view's columns."""
    return pb.TaskEvent(type=pb.TASK_EVENT_TYPE_SNAPSHOT, task=task_row_to_message(row))


def bookmark_message(cursor: str) -> task_service_pb2.TaskEvent:
    """A BOOKMARK: only the position the stream has reached."""
    return pb.TaskEvent(type=pb.TASK_EVENT_TYPE_BOOKMARK, cursor=cursor)


def with_full_view(
    message: task_service_pb2.TaskEvent, task: Task | None
) -> task_service_pb2.TaskEvent:
    """A copy of `message` whose task also carries `task`'s assignee and live subtasks
    (loaded now: as of delivery). Unchanged when the task is gone."""
    if task is None:
        return message
    full = pb.TaskEvent()
    full.CopyFrom(message)
    current = task_to_message(task, resources_pb2.TASK_VIEW_FULL)
    if current.HasField("assignee"):
        full.task.assignee.CopyFrom(current.assignee)
    full.task.subtasks.extend(current.subtasks)
    return full


def chunk_response(chunk: Chunk, cursor_of: CursorOf | None) -> bytes:
    """A serialized WatchTasksResponse of a chunk's events, made once per chunk and
    flavour and shared by every stream the chunk is queued for. Serialized responses
    concatenate into one (a repeated field merges), so a stream sends several chunks
    as one message without re-encoding."""
    key = cursor_of is not None
    encoded: bytes | None = chunk.memo.get(key)
    if encoded is None:
        events = [change_message(event, gone, cursor_of) for event, gone in chunk.events]
        encoded = chunk.memo[key] = pb.WatchTasksResponse(events=events).SerializeToString()
    return encoded
