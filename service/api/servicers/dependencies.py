"""What every servicer needs from the process: sessions, tokens, admission, the shutdown signal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.api.call_context import ANONYMOUS, Caller, claimed_actor, current_caller
from service.api.pagination import PageTokens
from service.storage.database import SessionFactory, UnitOfWork


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
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    admission: Admission = field(default_factory=Unlimited)
    open_streams: int = 0

    def unit_of_work(self, context: Any = None, *, read_only: bool = False) -> UnitOfWork:
        """A fresh session scope for one RPC (or one stream batch), audited as its caller
        and bounded by its deadline."""
        if read_only:
            # Reads audit nothing and run outside a transaction (no statement_timeout to
            # set): skip reading the caller's metadata and deadline on the hottest path.
            return UnitOfWork(self.session_factory, read_only=True)
        return UnitOfWork(
            self.session_factory,
            actor_of(context),
            deadline=deadline_of(context),
        )

    @contextmanager
    def stream_open(self) -> Iterator[None]:
        """Count a server stream while its handler runs (shutdown and tests watch it)."""
        self.open_streams += 1
        try:
            yield
        finally:
            self.open_streams -= 1
