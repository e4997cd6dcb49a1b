"""Read replicas: which hot standby may serve a read, and how far each has replayed.

Positions are WAL positions (LSNs) as integers. A standby may serve a read when it is
healthy and less than `max_replica_lag` seconds behind the primary; a read that must
see a given position (a client's consistency token, or the position an earlier page
was read at) goes to a standby only once it has replayed that far, waiting a little
(`replica_wait`, within the deadline), and otherwise to the primary. A standby that
fails a read is taken out at once and the read runs again on the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.storage.database import SessionFactory, UnitOfWork, make_session_factory
from service.storage.engines import create_engine, create_probe_engine
from service.storage.errors import ServiceError, to_service_error

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECK_TIMEOUT = 2.0  # seconds one replication check (connecting included) may take
FAST_POLL = 0.002  # seconds between checks of a standby while reads wait for it
# Errors of a read on a standby after which the primary answers it instead: the standby
# is unreachable, or cancelled the query for a conflict with recovery (SQLSTATE 40001).
_RETRY_ON_PRIMARY = frozenset({"UNAVAILABLE", "ABORTED"})
# A standby reports how far it replayed; a promoted one (no longer in recovery) how far
# it wrote. As bigint bytes from 0/0, so no pg_lsn codec is needed.
_STANDBY_POSITION = text(
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint"
)
# The primary's flushed WAL: what a standby can have received, for measuring lag.
_PRIMARY_POSITION = text("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint")
# After a commit: every record inserted so far, the commit's included. A standby that
# replayed this far has replayed the commit, so the write is visible there. (Read inside
# the transaction it would come before the commit record: too early.)
_WRITE_POSITION = text("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")


_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def format_lsn(position: int) -> str:
    """An LSN as PostgreSQL writes it (pg_lsn): two hex halves, e.g. 16/B374D848."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def parse_lsn(value: str) -> int:
    """The LSN written as pg_lsn text; ValueError if it is not one."""
    match = _LSN.fullmatch(value)
    if match is None:
        raise ValueError("not a WAL position")
    return (int(match[1], 16) << 32) | int(match[2], 16)


@dataclass(frozen=True)
class _Sample:
    at: float  # time.monotonic()
    position: int


class PrimaryHistory:
    """Recent primary positions and when they were seen: the clock that lag is read on."""

    def __init__(self, keep_seconds: float) -> None:
        self._keep = keep_seconds
        self._samples: deque[_Sample] = deque()

    def add(self, position: int, at: float) -> None:
        """Record the primary's position at `at`, forgetting samples past the window."""
        self._samples.append(_Sample(at, position))
        while len(self._samples) > 1 and at - self._samples[0].at > self._keep:
            self._samples.popleft()

    @property
    def latest(self) -> int:
        """The newest primary position seen (0 before the first sample)."""
        return self._samples[-1].position if self._samples else 0

    def lag_of(self, position: int, now: float) -> float:
        """Seconds since the primary first stood past `position` (0 if it never did)."""
        for sample in self._samples:
            if sample.position > position:
                return now - sample.at
        return 0.0


class Replica:
    """One hot standby: its own pool for reads, a connection for checks, its state."""

    def __init__(self, settings: Settings, url: str, history: PrimaryHistory) -> None:
        self.engine = create_engine(settings, url=url)
        self.sessions = make_session_factory(self.engine)
        self.name = self.engine.url.render_as_string(hide_password=True)
        self._checks = create_probe_engine(settings, url)
        self._history = history
        self.healthy = False  # until its first check passes
        self.position = 0
        self.lag = math.inf
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._poller: asyncio.Task[None] | None = None

    def eligible(self, max_lag: float) -> bool:
        """Healthy and close enough behind the primary to serve reads."""
        return self.healthy and self.lag <= max_lag

    async def check(self) -> bool:
        """Read the standby's position; on failure it serves nothing until a check passes."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT), self._checks.connect() as connection:
                position = (await connection.execute(_STANDBY_POSITION)).scalar_one()
        except Exception as error:  # noqa: BLE001 - any failure means "not usable now"
            self.mark_failed(error)
            await self._checks.dispose()  # a timed-out connection may be in any state
            return False
        if not self.healthy:
            log.info("read replica %s is healthy", self.name)
        self.healthy = True
        # As reported, even if lower than before: a restarted standby opens for reads
        # before it has replayed again what it had replayed before the restart.
        self.position = position or 0
        self.lag = self._history.lag_of(self.position, time.monotonic())
        self._release_waiters()
        return True

    def mark_failed(self, error: BaseException) -> None:
        """Take the standby out of service until a check passes again."""
        if self.healthy:
            log.warning("read replica %s is unavailable: %s", self.name, error)
        self.healthy = False
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(False)
        self._waiters.clear()

    async def wait_for(self, position: int, timeout: float) -> bool:
        """Whether the standby replays `position` within `timeout` seconds (checked often)."""
        if self.position >= position:
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (position, waiter)
        self._waiters.append(entry)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_while_waited())
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    async def _poll_while_waited(self) -> None:
        while self._waiters and await self.check():
            await asyncio.sleep(FAST_POLL)

    def _release_waiters(self) -> None:
        for wanted, waiter in self._waiters:
            if wanted <= self.position and not waiter.done():
                waiter.set_result(True)

    async def close(self) -> None:
        """Stop polling and close both pools."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.engine.dispose()
        await self._checks.dispose()


class ReplicaSet:
    """The configured standbys, their monitor, and reads routed among them and the primary."""

    def __init__(self, settings: Settings, primary: AsyncEngine) -> None:
        self.max_lag = settings.max_replica_lag
        self.wait = settings.replica_wait
        self.interval = settings.replica_check_interval
        self.history = PrimaryHistory(keep_seconds=2 * self.max_lag + 4 * self.interval)
        self.replicas = [
            Replica(settings, url, self.history) for url in settings.read_database_urls
        ]
        self._primary = primary
        self._primary_checks = create_probe_engine(settings)
        self._next = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Check every standby once (so reads use them at once), then keep checking."""
        await self.check_all()
        self._task = asyncio.create_task(self._monitor(), name="read-replica-monitor")

    async def stop(self) -> None:
        """Stop checking and close every pool this set opened."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for replica in self.replicas:
            await replica.close()
        await self._primary_checks.dispose()

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check_all()

    async def check_all(self) -> None:
        """Sample the primary's position, then every standby's (lag is read against it)."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT), self._primary_checks.connect() as c:
                position = (await c.execute(_PRIMARY_POSITION)).scalar_one()
            self.history.add(position, time.monotonic())
        except Exception as error:  # noqa: BLE001 - standbys may serve while the primary is away
            log.warning("cannot read the primary's WAL position: %s", error)
            await self._primary_checks.dispose()
        await asyncio.gather(*(replica.check() for replica in self.replicas))

    async def write_position(self) -> int:
        """The primary's WAL position after a commit: a standby past it shows the write."""
        async with self._primary.connect() as connection:
            position: int = (await connection.execute(_WRITE_POSITION)).scalar_one()
        return position

    async def read(
        self,
        primary: SessionFactory,
        work: Callable[[UnitOfWork], Awaitable[T]],
        *,
        at_least: int | None,
        deadline: float | None,
    ) -> tuple[T, int]:
        """Run the read `work` where it may run; its result and the position it was read at
        (at least `at_least`: what a later page must see)."""
        floor = at_least or 0
        replica = await self._route(floor, deadline)
        if replica is not None:
            position = max(replica.position, floor)
            try:
                async with UnitOfWork(replica.sessions, read_only=True) as uow:
                    return await work(uow), position
            except Exception as error:
                if isinstance(error, ServiceError):
                    raise
                if to_service_error(error).code not in _RETRY_ON_PRIMARY:
                    raise
                replica.mark_failed(error)
        async with UnitOfWork(primary, read_only=True) as uow:
            result = await work(uow)
        return result, max(self.history.latest, floor)

    async def _route(self, floor: int, deadline: float | None) -> Replica | None:
        """A standby that may serve a read needing `floor`, waiting for one; None: the primary."""
        eligible = [replica for replica in self.replicas if replica.eligible(self.max_lag)]
        if not eligible:
            return None
        ready = [replica for replica in eligible if replica.position >= floor]
        if ready:
            self._next = (self._next + 1) % len(ready)
            return ready[self._next]
        budget = self.wait
        if deadline is not None:
            # Leave the primary at least as long as the wait, should the standby not catch up.
            budget = min(budget, (deadline - time.monotonic()) / 2)
        if budget <= 0:
            return None
        furthest = max(eligible, key=lambda replica: replica.position)
        return furthest if await furthest.wait_for(floor, budget) else None
