"""The process's one reader of the change feed, and its fan-out to watchers.

Why commit numbers: a feed read "after position P" must never skip an event that
commits later with a smaller position. Sequence values (audit ids) are taken when a
row is inserted, not when it commits, so an id taken early and committed late lands
behind a cursor that already passed it (commanded/eventstore#3, Eventuous#222). On
PostgreSQL a deferred trigger on audit_events therefore numbers each transaction with
task events at COMMIT, under a transaction-scoped advisory lock, in `feed_commits`
(migration 0009). The lock is released only after the commit is visible, so commit
numbers follow visibility: whoever sees commit n sees every commit before it, and a
read "after P" in (seq, event id) order skips nothing. The lock is taken after every
other lock of the transaction (the trigger is deferred to COMMIT), so it cannot join
a deadlock; it serialises only the last step of a commit, which the NOTIFY that every
such commit sends serialises already (PostgreSQL holds a global lock while it queues
notifications at commit).

Why not a transaction-id watermark (deliver only below
pg_snapshot_xmin(pg_current_snapshot()), ordered by xid): it never skips, but a
transaction takes its xid at its first write or row lock, not at commit. DeleteTask
with force locks the parent first and a subtask later; an update of that subtask that
locks it in between commits first but has the larger xid, so xid order would deliver
the delete before the update it followed: one task's events out of commit order.
SQLite needs neither: its one writer at a time (BEGIN IMMEDIATE) commits in id order.

Wake-ups: PostgreSQL writers NOTIFY (same trigger); this process LISTENs on ONE
dedicated asyncpg connection (session_database_url: a direct, session-mode connection),
and a NOTIFY wakes ONE read of new events shared by every watcher of the process,
filtered in memory per distinct filter and queued per watcher (bounded). A slow safety
re-read every `recheck_interval` seconds (also pinging the listener) covers a lost
connection; there is no steady polling. SQLite: the unit of work's commit wakes the
reader in-process, plus a short poll for other processes writing the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

import asyncpg
from sqlalchemy.engine import make_url

from service.settings import Settings
from service.storage.database import SessionFactory, UnitOfWork
from service.storage.feed_events import FeedEvent, FeedPosition, relevance
from service.storage.feed_watcher import Chunk, EndReason, FeedWatcher, is_expired
from service.storage.filters import TaskFilter

log = logging.getLogger(__name__)

# The NOTIFY channel the commit trigger sends on (migration 0009).
CHANNEL = "taskservice_feed"
# Shown in pg_stat_activity (with the process id), so the one listening connection per
# process is easy to find.
LISTENER_NAME = "taskservice-feed-listener"
_PING_TIMEOUT = 5.0
# Why watchers went, as the metrics say it; None: the stream itself ended (the client
# cancelled, its deadline passed, or the handler failed) while it was still fed.
_END_LABELS: dict[EndReason | None, str] = {
    EndReason.SHUTDOWN: "shutdown",
    EndReason.OVERFLOW: "too_slow",
    EndReason.EXPIRED: "expired",
    None: "closed",
}
_RETRY_DELAY = 1.0


@dataclass(frozen=True)
class FeedConfig:
    """How the process reads the feed."""

    listen_dsn: str | None  # asyncpg DSN to LISTEN on; None: SQLite (poll)
    recheck_interval: float  # PostgreSQL: re-read (and ping the listener) this often anyway
    poll_interval: float  # SQLite: poll this often
    read_batch: int  # events per read
    watcher_buffer: int  # events a watcher may have queued before it is cut off
    min_read_interval: float = 0.0  # seconds between reads at least (batches busy periods)


# Query parameters of a SQLAlchemy URL meant for its asyncpg dialect, not for asyncpg.
_DIALECT_ONLY_PARAMETERS = ("prepared_statement_cache_size", "prepared_statement_name_func")


def feed_config(settings: Settings) -> FeedConfig:
    """The change feed's configuration from the process settings."""
    listen_dsn = None
    if not settings.is_sqlite:
        if settings.session_url_is_pooled:
            log.warning(
                "change feed: LISTEN goes through the transaction pooler (database_pooler="
                "transaction, no session_database_url): notifications get lost there, so "
                "watchers wake only at the feed_recheck_interval re-reads; point "
                "session_database_url at PostgreSQL itself"
            )
        url = make_url(settings.session_url)  # LISTEN needs a session connection
        url = url.difference_update_query(_DIALECT_ONLY_PARAMETERS).set(drivername="postgresql")
        listen_dsn = url.render_as_string(hide_password=False)
    return FeedConfig(
        listen_dsn=listen_dsn,
        recheck_interval=settings.feed_recheck_interval,
        poll_interval=settings.feed_poll_interval,
        read_batch=settings.feed_batch_size,
        watcher_buffer=settings.feed_watcher_buffer,
        min_read_interval=settings.feed_min_read_interval,
    )


class ChangeFeed:
    """Reads new task events once per wake-up and offers them to every watcher."""

    def __init__(self, session_factory: SessionFactory, config: FeedConfig) -> None:
        self._factory = session_factory
        self.config = config
        self.closing = False
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        # Watchers grouped by filter: relevance is worked out once per distinct filter.
        self._groups: dict[TaskFilter, dict[FeedWatcher, None]] = {}
        self._watchers = 0
        self._head: FeedPosition | None = None  # what the reader has read up to
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        # For metrics, read at scrape time (plain counts: no cost per event beyond an add).
        self.reads = 0  # shared reads of new events
        self.events_delivered = 0  # change events handed to streams (per stream)
        self.streams_ended: dict[str, int] = {}  # watchers gone, by why (EndReason or "closed")
        # At the last read that found events: how long its oldest event had been committed
        # (the reader's lag behind commits: wake-up, batching, a busy loop; the database
        # clock against this host's).
        self.read_delay = 0.0

    @property
    def watchers(self) -> int:
        """How many watchers are subscribed."""
        return self._watchers

    @property
    def listener_pid(self) -> int | None:
        """The PostgreSQL backend of the listening connection (None: not connected), to
        find it in pg_stat_activity among other processes' listeners."""
        listener = self._listener
        if listener is None or listener.is_closed():
            return None
        pid: int = listener.get_server_pid()
        return pid

    def start(self) -> None:
        """Start the reader (and, on PostgreSQL, the listener) in the background."""
        if self.config.listen_dsn is None:
            self._factory.commit_listeners.append(self.wake)
        self._task = asyncio.create_task(self._run(), name="change-feed")

    def wake(self) -> None:
        """Something committed: read new events soon."""
        self._wake.set()

    def shutdown(self) -> None:
        """End every watcher (the server drains) and refuse new ones."""
        self.closing = True
        self._end_all(EndReason.SHUTDOWN)

    async def stop(self) -> None:
        """Stop reading and close the listening connection."""
        self.shutdown()
        if self.wake in self._factory.commit_listeners:
            self._factory.commit_listeners.remove(self.wake)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_listener()

    async def subscribe(self, task_filter: TaskFilter, after: FeedPosition | None) -> FeedWatcher:
        """A watcher of the events after `after` (None: from the reader's head) that the
        reader will queue for it; `watcher.joined_at` is the reader's head when it
        joined: the events up to there are the caller's to read (FeedStream does)."""
        async with self._lock:
            if self._head is None:
                self._head = await self._read_head()
            start = self._head if after is None else after
            watcher = FeedWatcher(task_filter, start, self._head, self.config.watcher_buffer)
            if self.closing:
                watcher.end(EndReason.SHUTDOWN)
                self._count_end(watcher)
                return watcher
            self._groups.setdefault(task_filter, {})[watcher] = None
            self._watchers += 1
            return watcher

    def unsubscribe(self, watcher: FeedWatcher) -> None:
        """Forget a watcher (its stream ended); safe to call twice."""
        group = self._groups.get(watcher.task_filter)
        if group is None or group.pop(watcher, False) is False:
            return
        self._watchers -= 1
        self._count_end(watcher)
        if not group:
            del self._groups[watcher.task_filter]

    def _count_end(self, watcher: FeedWatcher) -> None:
        reason = _END_LABELS[watcher.ended]
        self.streams_ended[reason] = self.streams_ended.get(reason, 0) + 1

    async def _read_head(self) -> FeedPosition:
        async with UnitOfWork(self._factory, read_only=True) as uow:
            _, head = await uow.feed.bounds()
        return FeedPosition.after_commit(head)

    # --- the reader ---------------------------------------------------------------

    async def _run(self) -> None:
        next_read = 0.0
        while True:
            try:
                await self._wait_for_wake_up()
                # Busy: let commits gather for a moment, so one read (and one message
                # per watcher) carries several. Quiet: read at once.
                delay = next_read - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_read = time.monotonic() + self.config.min_read_interval
                await self._read_new_events()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the reader must outlive a database outage
                log.warning("change feed: read failed; retrying", exc_info=True)
                await self._close_listener()
                await asyncio.sleep(_RETRY_DELAY)

    async def _wait_for_wake_up(self) -> None:
        if self.config.listen_dsn is None:
            interval = self.config.poll_interval
        else:
            if await self._listen():
                return  # (re)connected: notifications may have been missed, read now
            interval = self.config.recheck_interval
        try:
            async with asyncio.timeout(interval):
                await self._wake.wait()
        except TimeoutError:
            if self.config.listen_dsn is not None:
                await self._ping_listener()
        self._wake.clear()

    async def _read_new_events(self) -> None:
        async with self._lock:
            if not self._watchers:
                self._head = None  # nobody to read for: catch up when someone subscribes
                return
            while self._head is not None:
                async with UnitOfWork(self._factory, read_only=True) as uow:
                    read = await uow.feed.read_after(self._head, self.config.read_batch)
                self.reads += 1
                if read.horizon is not None and is_expired(self._head, read.horizon):
                    # Retention purged events nobody here has read yet: no watcher of
                    # this process can continue exactly.
                    log.warning("change feed: history purged past the reader; ending watchers")
                    self._end_all(EndReason.EXPIRED)
                    self._head = None
                    return
                if not read.events:
                    return
                self._head = read.events[-1].position
                self.read_delay = max(0.0, time.time() - read.events[0].commit_time.timestamp())
                self._dispatch(read.events, self._head)
                if len(read.events) < self.config.read_batch:
                    return

    def _dispatch(self, events: list[FeedEvent], upto: FeedPosition) -> None:
        ended = []
        for task_filter, watchers in self._groups.items():
            relevant = []
            for event in events:
                delivered, no_longer_matches = relevance(task_filter, event)
                if delivered:
                    relevant.append((event, no_longer_matches))
            chunk = Chunk(relevant) if relevant else None  # one for the whole group
            for watcher in watchers:
                watcher.offer(chunk, upto)
                if watcher.ended is not None:
                    ended.append(watcher)
        for watcher in ended:
            self.unsubscribe(watcher)

    def _end_all(self, reason: EndReason) -> None:
        for watchers in list(self._groups.values()):
            for watcher in list(watchers):
                watcher.end(reason)
                self.unsubscribe(watcher)

    # --- the listener (PostgreSQL) ---------------------------------------------------

    async def _listen(self) -> bool:
        """Make sure the listening connection is up; True if it was (re)connected now."""
        if self._listener is not None and not self._listener.is_closed():
            return False
        await self._close_listener()
        assert self.config.listen_dsn is not None
        connection = await asyncpg.connect(
            self.config.listen_dsn,
            server_settings={"application_name": f"{LISTENER_NAME} pid={os.getpid()}"},
            statement_cache_size=0,  # nothing to prepare; safe behind any pooler
        )
        self._listener = connection  # first: a cancel from here on still closes it
        connection.add_termination_listener(self._on_listener_lost)
        await connection.add_listener(CHANNEL, self._on_notify)
        log.info("change feed: listening for commits")
        return True

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    def _on_listener_lost(self, *_args: object) -> None:
        log.warning("change feed: lost the listening connection; reconnecting")
        self._wake.set()

    async def _ping_listener(self) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            await listener.execute("SELECT 1", timeout=_PING_TIMEOUT)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.warning("change feed: the listening connection does not answer; reconnecting")
            await self._close_listener()

    async def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            listener.remove_termination_listener(self._on_listener_lost)  # we close it
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), _PING_TIMEOUT)
