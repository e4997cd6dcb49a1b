"""What every servicer needs from the process: sessions, tokens, admission, the shutdown signal."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from service.api.call_context import ANONYMOUS, Caller, claimed_actor, current_caller
from service.api.consistency import publish_position, requested_position
from service.api.cursors import FeedCursors
from service.api.pagination import PageTokens
from service.storage.change_feed import ChangeFeed
from service.storage.database import SessionFactory, UnitOfWork
from service.storage.replicas import ReplicaSet

T = TypeVar("T")
Read = Callable[[UnitOfWork], Awaitable[T]]
log = logging.getLogger(__name__)


def actor_of(context: Any) -> str:
    """Who is calling, for the audit trail: the authenticated principal when auth is on,
    else the `x-actor` metadata (unverified, for local use), else anonymous."""
    caller = current_caller()
    if caller is not None:
        return caller.actor
    if context is None:
        return ANONYMOUS
    # No observability layer in front (a servicer called directly): the call is running,
    # so its metadata can be read now.
    return Caller(claimed_actor(context.invocation_metadata())).actor


def deadline_of(context: Any) -> float | None:
    """When the caller stops waiting, on the time.monotonic() clock; None without a deadline."""
    remaining = None if context is None else context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def time_left(deadline: float | None) -> Callable[[], float | None]:
    """Seconds left until `deadline` (time.monotonic()), read when called; None: no deadline."""
    return lambda: None if deadline is None else deadline - time.monotonic()


class Admission(Protocol):
    """The process's admission gate, as a stream's batch reads meet it."""

    def slot(
        self, remaining: Callable[[], float | None], *, bounded: bool = True
    ) -> AbstractAsyncContextManager[None]:
        """Hold a slot for the block; ResourceExhausted when overloaded. `bounded` False:
        wait in line even when the queue is full (a stream that was admitted already)."""
        ...


class Unlimited:
    """No admission control: every slot is free at once."""

    @asynccontextmanager
    async def slot(
        self, remaining: Callable[[], float | None], *, bounded: bool = True
    ) -> AsyncIterator[None]:
        """Hold nothing."""
        yield


@dataclass
class Dependencies:
    """Process-wide, shared, immutable-after-start-up state (no per-RPC state here)."""

    session_factory: SessionFactory
    page_tokens: PageTokens
    feed_cursors: FeedCursors
    feed: ChangeFeed | None = None  # set once the server starts it
    feed_bookmark_interval: float = 30.0
    replicas: ReplicaSet | None = None
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    admission: Admission = field(default_factory=Unlimited)
    open_streams: int = 0

    def unit_of_work(self, context: Any = None, *, read_only: bool = False) -> UnitOfWork:
        """A fresh session scope on the primary for one RPC (or one stream batch), audited
        as its caller and bounded by its deadline; with replicas, a write returns its
        consistency token."""
        if read_only:
            # Reads audit nothing and run outside a transaction (no statement_timeout to
            # set): skip reading the caller's metadata and deadline on the hottest path.
            return UnitOfWork(self.session_factory, read_only=True)
        return UnitOfWork(
            self.session_factory,
            actor_of(context),
            deadline=deadline_of(context),
            after_success=(
                None if self.replicas is None or context is None else self._publisher(context)
            ),
        )

    async def read(self, context: Any, work: Read[T]) -> T:
        """Run the read `work` in a read-only unit of work: on the primary, or with
        replicas on a standby that is recent enough for the caller's consistency token."""
        if self.replicas is None:
            async with UnitOfWork(self.session_factory, read_only=True) as uow:
                return await work(uow)
        value, _ = await self.read_at(context, work, None)
        return value

    async def read_at(self, context: Any, work: Read[T], at: int | None) -> tuple[T, int | None]:
        """Like `read` for one page of many: also see position `at` (where the previous
        page was read), and return where this one was read (None without replicas)."""
        if self.replicas is None:
            async with UnitOfWork(self.session_factory, read_only=True) as uow:
                return await work(uow), None
        return await self.reader(context)(work, at)

    def reader(
        self, context: Any
    ) -> Callable[[Read[Any], int | None], Awaitable[tuple[Any, int | None]]]:
        """`read_at` bound to what the call asked for (consistency token, deadline), read
        from `context` NOW: for reads that may outlive the call, like a stream's
        read-ahead, which must never touch a finished call's context."""
        replicas = self.replicas
        token = None if context is None or replicas is None else requested_position(context)
        deadline = deadline_of(context)

        async def read_at(work: Read[Any], at: int | None) -> tuple[Any, int | None]:
            if replicas is None:
                async with UnitOfWork(self.session_factory, read_only=True) as uow:
                    return await work(uow), None
            floor = max(token or 0, at or 0) or None
            return await replicas.read(
                self.session_factory, work, at_least=floor, deadline=deadline
            )

        return read_at

    def _publisher(self, context: Any) -> Callable[[], Awaitable[None]]:
        replicas = self.replicas
        assert replicas is not None

        async def publish() -> None:
            try:
                position = await replicas.write_position()
            except Exception as error:  # noqa: BLE001 - the write itself committed
                # Failing a committed write would invite a duplicate retry: answer it
                # without a token (reads then see it once a standby catches up).
                log.warning("no consistency token for a committed write: %s", error)
                return
            publish_position(context, position)

        return publish

    @contextmanager
    def stream_open(self) -> Iterator[None]:
        """Count a server stream while its handler runs (shutdown and tests watch it)."""
        self.open_streams += 1
        try:
            yield
        finally:
            self.open_streams -= 1
