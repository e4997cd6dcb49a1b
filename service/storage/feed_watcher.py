"""One watcher's bounded queue of feed events, filled by the process's reader."""

from __future__ import annotations

import asyncio
import enum
from collections import deque

from service.storage.feed_events import WHOLE_COMMIT, FeedEvent, FeedPosition
from service.storage.filters import TaskFilter

# An event for a watcher, and whether it takes the task out of the watcher's set.
QueuedEvent = tuple[FeedEvent, bool]


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
        self.queue: deque[QueuedEvent] = deque()
        self.ended: EndReason | None = None
        self.drained_at_end = False  # nothing was queued when it ended: `seen` is reached
        self._ready = asyncio.Event()

    def offer(self, relevant: list[QueuedEvent], upto: FeedPosition) -> None:
        """The reader read up to `upto`; these of its events are for this watcher."""
        if self.ended is not None or upto <= self.after:
            return
        if relevant and relevant[0][0].position <= self.after:
            relevant = [item for item in relevant if item[0].position > self.after]
        if len(self.queue) + len(relevant) > self.capacity:
            self.end(EndReason.OVERFLOW)
            return
        self.queue.extend(relevant)
        self.seen = upto
        if relevant:
            self._ready.set()

    def end(self, reason: EndReason) -> None:
        """Stop feeding this watcher; its stream ends at its next look."""
        if self.ended is None:
            self.ended = reason
            self.drained_at_end = not self.queue
            self.queue.clear()  # the stream resumes from what it delivered; free the rest
            self._ready.set()

    def take(self, limit: int) -> list[QueuedEvent]:
        """Up to `limit` queued events, oldest first."""
        queue = self.queue
        taken = [queue.popleft() for _ in range(min(limit, len(queue)))]
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
