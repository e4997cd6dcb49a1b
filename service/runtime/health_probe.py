"""Database health probe: the gRPC health status follows whether the database answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from grpc_health.v1 import health_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.settings import Settings
from service.storage.engines import create_probe_engine

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0  # seconds one `SELECT 1` (connecting included) may take
_SELECT_1 = text("SELECT 1")


class DatabaseHealthProbe:
    """Every `interval` seconds runs `SELECT 1`; NOT_SERVING while it fails, SERVING after.

    It has its own one-connection engine, so a busy pool neither delays the probe nor
    loses a connection to it. Stopping it ends the task for good: the server's graceful
    shutdown owns the status from then on.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        health: Any,
        services: Sequence[str],
        *,
        interval: float,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._engine = engine
        self._health = health  # grpc_health.v1.health.aio.HealthServicer
        self._services = tuple(services)
        self._interval = interval
        self._timeout = timeout
        self._serving = True  # start_server reports SERVING before the probe starts
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_settings(
        cls, settings: Settings, health: Any, services: Sequence[str]
    ) -> DatabaseHealthProbe:
        """A probe of the configured database at the configured interval."""
        return cls(
            create_probe_engine(settings),
            health,
            services,
            interval=settings.health_probe_interval,
        )

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Probe now and then every interval, in a background task."""
        self._task = asyncio.create_task(self._run(), name="database-health-probe")

    async def stop(self) -> None:
        """End the probe (it never changes the status afterwards) and close its connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._engine.dispose()

    async def _run(self) -> None:
        while True:
            reachable = await self._reachable()
            if reachable != self._serving:
                await self._publish(reachable)
            await asyncio.sleep(self._interval)

    async def _reachable(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout), self._engine.connect() as connection:
                await connection.execute(_SELECT_1)
        except Exception as error:  # noqa: BLE001 - any failure means "not reachable"
            if self._serving:
                log.warning("database health probe failed: %s", error)
            # A timed-out connection may be in any state: start from a fresh one.
            await self._engine.dispose()
            return False
        return True

    async def _publish(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in self._services:
            await self._health.set(service, status)
        self._serving = serving
        if serving:
            log.info("database reachable again: SERVING")
        else:
            log.warning("database unreachable: NOT_SERVING")
