"""What every servicer needs from the process: sessions, tokens, the shutdown signal."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.api.call_context import current_principal
from service.api.consistency import publish_position, requested_position
from service.api.pagination import PageTokens
from service.storage.database import SessionFactory, UnitOfWork
from service.storage.replicas import ReplicaSet

ACTOR_KEY = "x-actor"
ANONYMOUS = "anonymous"
T = TypeVar("T")
Read = Callable[[UnitOfWork], Awaitable[T]]
log = logging.getLogger(__name__)


def actor_of(context: Any) -> str:
    """Who is calling, for the audit trail: the authenticated principal when auth is on,
    else the `x-actor` metadata (unverified, for local use), else anonymous."""
    principal = current_principal()
    if principal is not None:
        return principal
    if context is None:
        return ANONYMOUS
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_KEY and isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return ANONYMOUS


def deadline_of(context: Any) -> float | None:
    """When the caller stops waiting, on the time.monotonic() clock; None without a deadline."""
    remaining = None if context is None else context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


@dataclass
class Dependencies:
    """Process-wide, shared, immutable-after-start-up state (no per-RPC state here)."""

    session_factory: SessionFactory
    page_tokens: PageTokens
    replicas: ReplicaSet | None = None
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
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
        token = None if context is None else requested_position(context)
        floor = max(token or 0, at or 0) or None
        return await self.replicas.read(
            self.session_factory, work, at_least=floor, deadline=deadline_of(context)
        )

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
