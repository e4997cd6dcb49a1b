"""What every servicer needs from the process: sessions, tokens, the shutdown signal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from service.api.call_context import current_principal
from service.api.cursors import FeedCursors
from service.api.pagination import PageTokens
from service.storage.change_feed import ChangeFeed
from service.storage.database import SessionFactory, UnitOfWork

ACTOR_KEY = "x-actor"
ANONYMOUS = "anonymous"


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
    feed_cursors: FeedCursors
    feed: ChangeFeed | None = None  # set once the server starts it
    feed_bookmark_interval: float = 30.0
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
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
