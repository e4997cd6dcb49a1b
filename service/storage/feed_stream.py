"""One watch stream: an initial snapshot or a resume, catch-up from history, live events.

A stream first reads what it missed itself (the initial snapshot, or the history after
its cursor), in short reads, and only then joins the process's reader, whose shared
reads feed it from there on. Joining is gap-free: the reader's head at subscription
is where the stream's own reads stop and the queue takes over.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from service.storage.change_feed import ChangeFeed
from service.storage.database import SessionFactory, UnitOfWork
from service.storage.errors import OutOfRange
from service.storage.feed_events import FeedEvent, FeedPosition, relevance
from service.storage.feed_watcher import (
    Chunk,
    EndReason,
    FeedWatcher,
    QueuedEvent,
    is_expired,
)
from service.storage.filters import TaskFilter
from service.storage.keyset import Ordering, Position, int_field
from service.storage.models import Task

# The initial snapshot reads by id: immutable, so each batch covers a fixed id range.
_BY_ID = Ordering("id", int_field(Task.id), descending=False)


@dataclass(frozen=True)
class SnapshotPage:
    """Tasks of the initial snapshot: rows of repositories.tasks.BASIC_COLUMNS."""

    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Changes:
    """Events for the stream, in chunks; `resumable` is False before the snapshot's
    bookmark (the events carry no cursor)."""

    chunks: list[Chunk]
    resumable: bool = True


@dataclass(frozen=True)
class Bookmark:
    """Everything up to `position` was delivered or did not match."""

    position: FeedPosition


@dataclass(frozen=True)
class Ended:
    """The stream must end (shutdown, or too far behind); resume from `position`."""

    reason: EndReason
    position: FeedPosition | None


FeedItem = SnapshotPage | Changes | Bookmark | Ended


def cursor_expired() -> OutOfRange:
    """The error for a cursor older than the retained history."""
    return OutOfRange(
        "CURSOR_EXPIRED",
        "the cursor is older than the retained change history; list the tasks again "
        "(initial_snapshot) and watch from the new bookmark",
    )


class FeedStream:
    """The items of one WatchTasks stream, in order."""

    def __init__(
        self,
        feed: ChangeFeed,
        session_factory: SessionFactory,
        task_filter: TaskFilter,
        *,
        bookmark_interval: float,
    ) -> None:
        self._feed = feed
        self._factory = session_factory
        self._filter = task_filter
        self._bookmark_interval = bookmark_interval
        self._batch = feed.config.read_batch
        # Everything up to here was handed over or did not match: where a resume starts.
        self.position: FeedPosition | None = None

    async def items(self, start: FeedPosition | None, snapshot: bool) -> AsyncIterator[FeedItem]:
        """Snapshot or resume, catch up, then live events and bookmarks until an end."""
        watcher: FeedWatcher | None = None
        try:
            if snapshot:
                async for item in self._snapshot():
                    yield item
                if self.position is None:
                    return  # ended during the snapshot
                yield Bookmark(self.position)
            elif start is None:
                watcher = await self._feed.subscribe(self._filter, None)
                self.position = watcher.joined_at
                yield Bookmark(self.position)
            else:
                await self._check_cursor(start)
                self.position = start
            if watcher is None:
                async for item in self._catch_up():
                    yield item
                watcher = await self._feed.subscribe(self._filter, self.position)
                async for item in self._catch_up(until=watcher):
                    yield item
            async for item in self._live(watcher):
                yield item
        finally:
            if watcher is not None:
                self._feed.unsubscribe(watcher)

    async def _check_cursor(self, start: FeedPosition) -> None:
        async with UnitOfWork(self._factory, read_only=True) as uow:
            horizon, head = await uow.feed.bounds()
        if is_expired(start, horizon):
            raise cursor_expired()
        if start.seq > head:
            raise OutOfRange(
                "CURSOR_UNKNOWN",
                "the cursor is ahead of this database's change history (another database, "
                "or one restored from a backup); list the tasks again",
            )

    async def _read(self, after: FeedPosition) -> list[FeedEvent]:
        async with UnitOfWork(self._factory, read_only=True) as uow:
            read = await uow.feed.read_after(after, self._batch)
        if read.horizon is not None and is_expired(after, read.horizon):
            raise cursor_expired()
        return read.events

    def _relevant(self, events: list[FeedEvent]) -> list[QueuedEvent]:
        relevant = []
        for event in events:
            delivered, no_longer_matches = relevance(self._filter, event)
            if delivered:
                relevant.append((event, no_longer_matches))
        return relevant

    async def _catch_up(self, until: FeedWatcher | None = None) -> AsyncIterator[FeedItem]:
        """Read history after self.position: to the end (then the stream subscribes), or,
        once subscribed, up to the reader's head at subscription (the queue has the rest)."""
        assert self.position is not None
        while until is None or self.position < until.joined_at:
            if self._feed.closing or (until is not None and until.ended is not None):
                return  # _live reports the end
            events = await self._read(self.position)
            complete = len(events) < self._batch
            if until is not None and events and events[-1].position > until.joined_at:
                events = [e for e in events if e.position <= until.joined_at]
                complete = True
            relevant = self._relevant(events)
            if events:
                self.position = events[-1].position
            if complete and until is not None:
                self.position = max(self.position, until.joined_at)
            if relevant:
                yield self._delivered([Chunk(relevant)])
            if complete and until is None:
                return

    async def _live(self, watcher: FeedWatcher) -> AsyncIterator[FeedItem]:
        while True:
            if watcher.ended is not None or self._feed.closing:
                yield self._end(watcher)
                return
            taken = watcher.take(self._batch)
            if taken:
                self.position = taken[-1].last
                yield self._delivered(taken)
                continue
            if not await watcher.wait(self._bookmark_interval) and watcher.ended is None:
                # Idle: nothing queued, so everything the reader has read is handed over.
                self.position = max(watcher.seen, self.position or watcher.seen)
                yield Bookmark(self.position)

    def _delivered(self, chunks: list[Chunk], resumable: bool = True) -> Changes:
        """Changes for the stream, counted for the feed's metrics."""
        self._feed.events_delivered += sum(len(chunk.events) for chunk in chunks)
        return Changes(chunks, resumable)

    def _end(self, watcher: FeedWatcher) -> Ended:
        reason = watcher.ended or EndReason.SHUTDOWN
        if reason is EndReason.EXPIRED:
            raise cursor_expired()
        position = self.position
        if reason is EndReason.SHUTDOWN and watcher.drained_at_end:
            position = max(watcher.seen, position or watcher.seen)
        return Ended(reason, position)

    # --- the initial snapshot ---------------------------------------------------------

    async def _snapshot(self) -> AsyncIterator[FeedItem]:
        """The matching tasks by id in batches, each read with the feed's head as of its
        own snapshot; then the changes each batch did not see yet. Sets self.position to
        where live events continue (None if the server began shutting down)."""
        async with UnitOfWork(self._factory, read_only=True) as uow:
            _, first_head = await uow.feed.bounds()
        uppers: list[int] = []  # batch i covers ids up to uppers[i]; the last one, the rest
        heads: list[int] = []  # the head each batch was read at
        after: Position | None = None
        while True:
            if self._feed.closing:
                yield Ended(EndReason.SHUTDOWN, None)
                return
            async with UnitOfWork(self._factory, read_only=True) as uow:
                page = await uow.tasks.list_rows(
                    self._filter, _BY_ID, after, self._batch, (uow.feed.head_column(),)
                )
            rows = page.items
            heads.append(int(rows[0][-1]) if rows else (heads[-1] if heads else first_head))
            if rows:
                yield SnapshotPage(rows)
            if not page.more:
                break
            uppers.append(rows[-1][0])
            after = Position(rows[-1][0], rows[-1][0])

        def seen_at(task_id: int) -> int:
            return heads[bisect_left(uppers, task_id)]

        async for item in self._changes_during_snapshot(first_head, heads[-1], seen_at):
            yield item
        self.position = FeedPosition.after_commit(heads[-1])

    async def _changes_during_snapshot(
        self, first: int, last: int, seen_at: Any
    ) -> AsyncIterator[FeedItem]:
        """Events committed while the snapshot was read (commits first..last) that the
        batch holding their task did not see; they carry no cursor."""
        position = FeedPosition.after_commit(first)
        while position.seq < last:
            events = await self._read(position)
            within = [e for e in events if e.position.seq <= last]
            unseen = [e for e in within if e.position.seq > seen_at(e.task_id)]
            relevant = self._relevant(unseen)
            if relevant:
                yield self._delivered([Chunk(relevant)], resumable=False)
            if len(within) < len(events) or len(events) < self._batch:
                return
            position = within[-1].position
