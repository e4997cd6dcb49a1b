"""WatchTasks: the change feed as a server stream (see service/storage/change_feed.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from service.api.mapping.feed import (
    bookmark_message,
    change_message,
    chunk_response,
    snapshot_message,
    watch_filter_from,
    with_full_view,
)
from service.api.requests import check_watch_tasks
from service.api.servicers.dependencies import Dependencies
from service.storage.errors import ResourceExhausted, ServiceError, Unavailable
from service.storage.feed_stream import (
    Bookmark,
    Changes,
    Ended,
    FeedItem,
    FeedStream,
    SnapshotPage,
)
from service.storage.feed_watcher import EndReason
from taskmanager.v1 import resources_pb2
from taskmanager.v1 import task_service_pb2 as pb

Context = Any  # grpc.aio.ServicerContext


class TaskWatch:
    """Serves WatchTasks streams from the process's change feed."""

    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps

    async def watch(self, request: pb.WatchTasksRequest, context: Context) -> AsyncIterator[bytes]:
        """Validate, then relay the feed stream's items as responses until it ends.

        Responses are serialized WatchTasksResponse messages (see api/serialized.py):
        a read's events are encoded once for every watcher with the same filter.
        The context is never touched here: a cancelled or expired call arrives as
        CancelledError, and FeedStream's finally unsubscribes without it.
        """
        check_watch_tasks(request)
        cursor = request.start_cursor
        start = self.deps.feed_cursors.decode(cursor) if cursor else None
        assert self.deps.feed is not None, "the server starts the change feed"
        stream = FeedStream(
            self.deps.feed,
            self.deps.session_factory,
            watch_filter_from(request),
            bookmark_interval=self.deps.feed_bookmark_interval,
        )
        full = request.view == resources_pb2.TASK_VIEW_FULL
        with self.deps.stream_open():
            async for item in stream.items(start, request.initial_snapshot):
                # The BASIC view of changes (most messages) without a coroutine per message.
                if not full and isinstance(item, Changes):
                    yield self._changes(item)
                else:
                    yield await self._response(item, full)

    def _changes(self, item: Changes) -> bytes:
        cursor_of = self.deps.feed_cursors.encode if item.resumable else None
        return b"".join([chunk_response(chunk, cursor_of) for chunk in item.chunks])

    async def _response(self, item: FeedItem, full: bool) -> bytes:
        if isinstance(item, Ended):
            raise self._ended(item)
        if isinstance(item, Bookmark):
            cursor = self.deps.feed_cursors.encode(item.position)
            return pb.WatchTasksResponse(events=[bookmark_message(cursor)]).SerializeToString()
        if isinstance(item, SnapshotPage):
            events = [snapshot_message(row) for row in item.rows]
            ids = [row[0] for row in item.rows]
        else:
            if not full:
                return self._changes(item)
            cursor_of = self.deps.feed_cursors.encode if item.resumable else None
            pairs = [pair for chunk in item.chunks for pair in chunk.events]
            events = [change_message(event, gone, cursor_of) for event, gone in pairs]
            ids = [event.task_id for event, _ in pairs]
        if full:
            events = await self._full_view(events, ids)
        return pb.WatchTasksResponse(events=events).SerializeToString()

    async def _full_view(
        self, events: list[pb.TaskEvent], ids: Sequence[int]
    ) -> list[pb.TaskEvent]:
        """TASK_VIEW_FULL: the assignees and subtasks of this response's tasks, now
        (one query per response)."""
        async with self.deps.unit_of_work(read_only=True) as uow:
            tasks = await uow.tasks.with_full_view(sorted(set(ids)))
        pairs = zip(events, ids, strict=True)
        return [with_full_view(message, tasks.get(task_id)) for message, task_id in pairs]

    def _ended(self, item: Ended) -> ServiceError:
        """The status a stream ends with, carrying the cursor to resume from."""
        cursor = (
            {}
            if item.position is None
            else {"cursor": self.deps.feed_cursors.encode(item.position)}
        )
        if item.reason is EndReason.OVERFLOW:
            return ResourceExhausted(
                "WATCHER_TOO_SLOW",
                "the stream fell too far behind the change feed; call again with "
                "start_cursor = the last cursor received",
                retry_delay=None,
                **cursor,
            )
        return Unavailable(
            "SERVER_SHUTTING_DOWN",
            "server is shutting down; call again with start_cursor = the last cursor received",
            **cursor,
        )
