"""A WatchTasks client for tests: reads a stream in the background, as a consumer would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from taskmanager.v1 import resources_pb2, task_service_pb2, task_service_pb2_grpc

pb = task_service_pb2
BOOKMARK = pb.TASK_EVENT_TYPE_BOOKMARK
SNAPSHOT = pb.TASK_EVENT_TYPE_SNAPSHOT
CREATED = pb.TASK_EVENT_TYPE_CREATED
UPDATED = pb.TASK_EVENT_TYPE_UPDATED
DELETED = pb.TASK_EVENT_TYPE_DELETED
UNDELETED = pb.TASK_EVENT_TYPE_UNDELETED


@dataclass
class StreamEnd:
    """How a watch stream ended: its status code, ErrorInfo reason and metadata."""

    code: grpc.StatusCode
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def cursor(self) -> str:
        return self.metadata.get("cursor", "")


async def stream_end(call: Any, error: grpc.aio.AioRpcError) -> StreamEnd:
    """The code and ErrorInfo of a failed call."""
    status = await rpc_status.aio.from_call(call)
    end = StreamEnd(error.code())
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            end.reason, end.metadata = info.reason, dict(info.metadata)
    return end


class Watch:
    """One WatchTasks stream, read in the background into `events` (bookmarks included)."""

    def __init__(
        self,
        tasks: task_service_pb2_grpc.TaskServiceStub,
        request: task_service_pb2.WatchTasksRequest,
        **call_options: Any,
    ) -> None:
        self.call = tasks.WatchTasks(request, **call_options)
        self.events: list[pb.TaskEvent] = []
        self.responses = 0
        self.end: StreamEnd | None = None
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.responses += 1
                self.events.extend(response.events)
                self._changed.set()
        except grpc.aio.AioRpcError as error:
            self.end = await stream_end(self.call, error)
        else:
            self.end = StreamEnd(grpc.StatusCode.OK)
        self._changed.set()

    @property
    def changes(self) -> list[pb.TaskEvent]:
        """Events that report a task (everything but bookmarks)."""
        return [e for e in self.events if e.type != BOOKMARK]

    @property
    def last_cursor(self) -> str:
        """The cursor a client would resume from: the last one received."""
        return next((e.cursor for e in reversed(self.events) if e.cursor), "")

    async def wait_for(self, condition: Callable[[Watch], bool], timeout: float = 20.0) -> None:
        """Wait until `condition(self)` holds; fail if the stream ends first or it times out."""
        async with asyncio.timeout(timeout):
            while not condition(self):
                if self.end is not None:
                    raise AssertionError(f"the stream ended first: {self.end}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_changes(self, count: int, timeout: float = 20.0) -> list[pb.TaskEvent]:
        """Wait for at least `count` change events; return them all."""
        await self.wait_for(lambda w: len(w.changes) >= count, timeout)
        return self.changes

    async def ended(self, timeout: float = 20.0) -> StreamEnd:
        """Wait for the stream to end; its status."""
        async with asyncio.timeout(timeout):
            await self._reader
        assert self.end is not None
        return self.end

    async def cancel(self) -> None:
        """Stop reading, as a consumer that goes away does."""
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def started(watch: Watch, timeout: float = 20.0) -> Watch:
    """`watch` once its first response (the opening BOOKMARK, or a snapshot) arrived."""
    await watch.wait_for(lambda w: bool(w.events), timeout)
    return watch


def mirror(events: list[pb.TaskEvent]) -> dict[int, resources_pb2.Task]:
    """A client's copy of the watched set after applying `events` in order."""
    tasks: dict[int, resources_pb2.Task] = {}
    for event in events:
        if event.type == BOOKMARK:
            continue
        if event.no_longer_matches:
            tasks.pop(event.task.id, None)
        else:
            tasks[event.task.id] = event.task
    return tasks


def summary(events: list[pb.TaskEvent]) -> list[tuple[int, int, str]]:
    """(type, task id, etag) of each change: what a sequence comparison needs."""
    return [(e.type, e.task.id, e.task.etag) for e in events if e.type != BOOKMARK]


def version(task: resources_pb2.Task) -> int:
    """A task's version counter, from its etag (`"7"`)."""
    return int(task.etag.strip('"'))


def versions_by_task(events: list[pb.TaskEvent]) -> dict[int, list[int]]:
    """Each task's versions in the order its events (snapshot included) arrived."""
    found: dict[int, list[int]] = {}
    for event in events:
        if event.type != BOOKMARK:
            found.setdefault(event.task.id, []).append(version(event.task))
    return found


def assert_each_change_once_in_commit_order(
    events: list[pb.TaskEvent], *, consecutive: bool
) -> None:
    """Every write bumps a task's version under its row lock, so a task's versions order
    its commits: they must strictly increase along the stream (no duplicate, no reorder)
    and, for a watch that sees every change of its tasks, rise by exactly one (no gap)."""
    for task_id, seen in versions_by_task(events).items():
        assert seen == sorted(set(seen)), f"task {task_id}: versions {seen} out of order"
        if consecutive:
            assert seen == list(range(seen[0], seen[0] + len(seen))), f"task {task_id}: {seen}"
