"""One watcher's bounded queue of feed events, filled by the process's reader."""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from service.storage.feed_events import WHOLE_COMMIT, FeedEvent, FeedPosition
from service.storage.filters import TaskFilter

# An event for a watcher, and whether it takes the task out of the watcher's set.
QueuedEvent = tuple[FeedEvent, bool]


@dataclass(slots=True, eq=False)
class Chunk:
    """Events of one read that match one filter, in feed order.

    The reader makes one per distinct filter and read, and queues the same object for
    every watcher with that filter, so the edge can encode it once for all of them
    (`memo`; storage never reads it).
    """

    events: list[QueuedEvent]
    memo: dict[Any, Any] = field(default_factory=dict)

    @property
    def last(self) -> FeedPosition:
        """The position of its last event."""
        return self.events[-1][0].position


class EndReason(enum.Enum):
    """Why the reader stopped feeding a watcher."""

    SHUTDOWN = "shutdown"  # the server drains
    OVERFLOW = "overflow"  # the watcher fell `capacity` events behind
    EXPIRED = "expired"  # retention purged events it had not received


def is_expired(position: FeedPosition, horizon: int) -> bool:
    """Whether events after `position` may have been purged (commits up to `horizon`
    are gone; a position inside the horizon's own commit may have lost the rest of it)."""
    return position.seq < horizon or (position.seq == horizon and position.event_id != WHOLE_COMMIT)


class FeedWatcher:
    """The events waiting for one watch stream; never more than `capacity`."""

    __slots__ = (
        "_ready",
        "after",
        "capacity",
        "drained_at_end",
        "ended",
        "joined_at",
        "queue",
        "queued",
        "seen",
        "task_filter",
    )

    def __init__(
        self,
        task_filter: TaskFilter,
        after: FeedPosition,
        joined_at: FeedPosition,
        capacity: int,
    ) -> None:
        self.task_filter = task_filter
        self.after = after  # the reader's events up to here are not for this watcher
        self.joined_at = joined_at  # the reader's head at subscription
        # Every event up to here is queued, taken, or not for this watcher (filtered out);
        # once the stream has delivered up to joined_at, a bookmark may say so.
        self.seen = max(after, joined_at)
        self.capacity = capacity
        self.queue: deque[Chunk] = deque()
        self.queued = 0  # events in the queue
        self.ended: EndReason | None = None
        self.drained_at_end = False  # nothing was queued when it ended: `seen` is reached
        self._ready = asyncio.Event()

    def offer(self, chunk: Chunk | None, upto: FeedPosition) -> None:
        """The reader read up to `upto`; `chunk` holds its events for this watcher."""
        if self.ended is not None or upto <= self.after:
            return
        if chunk is not None and chunk.events[0][0].position <= self.after:
            # Joined with a cursor ahead of the reader: drop what it already has.
            events = [item for item in chunk.events if item[0].position > self.after]
            chunk = Chunk(events) if events else None
        if chunk is not None:
            if self.queued + len(chunk.events) > self.capacity:
                self.end(EndReason.OVERFLOW)
                return
            self.queue.append(chunk)
            self.queued += len(chunk.events)
            self._ready.set()
        self.seen = upto

    def end(self, reason: EndReason) -> None:
        """Stop feeding this watcher; its stream ends at its next look."""
        if self.ended is None:
            self.ended = reason
            self.drained_at_end = not self.queue
            self.queue.clear()  # the stream resumes from what it delivered; free the rest
            self.queued = 0
            self._ready.set()

    def take(self, limit: int) -> list[Chunk]:
        """Queued chunks, oldest first: at least one, more while they hold at most
        `limit` events together."""
        queue, count = self.queue, 0
        taken: list[Chunk] = []
        while queue and (not taken or count + len(queue[0].events) <= limit):
            chunk = queue.popleft()
            count += len(chunk.events)
            taken.append(chunk)
        self.queued -= count
        if not queue and self.ended is None:
            self._ready.clear()
        return taken

    async def wait(self, timeout: float) -> bool:
        """Wait for events or the end, at most `timeout` seconds; False if none came."""
        if self._ready.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True
