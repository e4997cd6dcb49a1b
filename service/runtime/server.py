"""Wiring: engine, servicers, reflection, health, admission, error translation, draining stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.cursors import FeedCursors
from service.api.errors import UnknownMethods, translate_errors
from service.api.handler_layers import LayeredRegistration, stack
from service.api.long_lived import LONG_LIVED_METHODS
from service.api.pagination import PageTokens
from service.api.serialized import accept_serialized
from service.api.servicers.dependencies import Dependencies
from service.api.servicers.projects import ProjectServicer
from service.api.servicers.tasks import TaskServicer
from service.api.servicers.workers import WorkerServicer
from service.runtime.admission import AdmissionGate, admission
from service.runtime.auth import auth_layers
from service.runtime.health_probe import DatabaseHealthProbe
from service.runtime.health_service import HealthServicer
from service.runtime.metrics import Metrics
from service.runtime.observability import observe
from service.runtime.shutdown import drain, exit_drained
from service.runtime.tracing import Tracing, start_tracing
from service.runtime.transport import PortInUse, bind, server_options
from service.settings import Settings
from service.storage.change_feed import ChangeFeed, feed_config
from service.storage.database import make_session_factory
from service.storage.engines import create_engine
from service.storage.replicas import ReplicaSet
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

log = logging.getLogger(__name__)
__all__ = ["PortInUse", "TaskServer", "serve", "start_server"]

SERVICE_NAMES = (
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    project_service_pb2.DESCRIPTOR.services_by_name["ProjectService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
)
# What grpc's own stop gives calls the drain did not wait for: only ungated calls
# (health, reflection) can still run, and a health Watch never ends by itself.
UNGATED_GRACE_S = 1.0


@dataclass
class TaskServer:
    """A started server and what must be released when it stops."""

    server: grpc.aio.Server
    port: int
    engine: AsyncEngine
    health: health.aio.HealthServicer
    deps: Dependencies
    gate: AdmissionGate
    feed: ChangeFeed
    metrics: Metrics | None = None
    probe: DatabaseHealthProbe | None = None
    tracing: Tracing | None = None
    replicas: ReplicaSet | None = None

    @property
    def metrics_port(self) -> int:
        """The bound /metrics port; 0 when metrics are off."""
        return self.metrics.port if self.metrics else 0

    async def drain(self, grace: float, *, drain_delay: float = 0.0) -> bool:
        """NOT_SERVING at once; serve on for `drain_delay`; then refuse new calls and let
        those in flight finish within `grace` (service.runtime.shutdown). False when some
        were still running after it."""
        if self.probe is not None:
            await self.probe.stop()  # first, so nothing can report SERVING again
        drained = await drain(
            self.gate,
            self.health,
            self.deps.shutting_down,
            grace=grace,
            drain_delay=drain_delay,
        )
        # Watch streams take no admission slot, so the drain did not wait for them: end
        # them now, each with its last cursor (UNAVAILABLE), and let their statuses leave.
        self.feed.shutdown()
        await self._streams_ended(UNGATED_GRACE_S)
        return drained

    async def _streams_ended(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while self.deps.open_streams and loop.time() < give_up:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the last status frames are written after the handler

    async def stop(self, grace: float, *, drain_delay: float = 0.0) -> None:
        """Drain, then stop gRPC (cancelling what is left) and release the pool."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + grace
        await self.drain(grace, drain_delay=drain_delay)
        await self.server.stop(min(UNGATED_GRACE_S, max(0.0, give_up - loop.time())))
        await self.release()

    async def release(self) -> None:
        """Close the change feed's listener, the pool and the /metrics listener."""
        await self.feed.stop()
        if self.replicas is not None:
            await self.replicas.stop()
        await self.engine.dispose()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.tracing is not None:
            await self.tracing.shutdown()  # exports the last calls' spans


async def start_server(settings: Settings) -> TaskServer:
    """Build and start the server on `settings.address`; PortInUse if it is taken."""
    engine = create_engine(settings)
    replicas = ReplicaSet(settings, engine) if settings.read_database_urls else None
    metrics = Metrics(engine) if settings.metrics_port else None
    gate = AdmissionGate(
        settings.admission_limit,
        settings.max_queued_rpcs,
        metrics.admission if metrics else None,
    )
    if metrics is not None:
        metrics.watch_admission(gate)
    session_factory = make_session_factory(engine)
    secret = settings.page_token_secret.get_secret_value()
    feed = ChangeFeed(session_factory, feed_config(settings))
    if metrics is not None:
        metrics.watch_feed(feed)
    deps = Dependencies(
        session_factory=session_factory,
        page_tokens=PageTokens(secret),
        replicas=replicas,
        admission=gate,
        feed_cursors=FeedCursors(secret),
        feed=feed,
        feed_bookmark_interval=settings.feed_bookmark_interval,
    )
    tracing = start_tracing(settings)  # None (and no per-call cost) unless configured
    if tracing is not None:
        standbys = replicas.replicas if replicas is not None else []
        for traced_engine in (engine, *(standby.engine for standby in standbys)):
            tracing.trace_statements(traced_engine)
    server = grpc.aio.server(options=server_options(settings))
    # Every handler is wrapped once, outermost first: logs and metrics see the final
    # status of every RPC, tracing next (its span is current for all inside it),
    # authentication before any handler (a refused call takes no slot), then admission,
    # the error translator innermost. (Layers at
    # registration, not interceptors: see handler_layers.)
    services = LayeredRegistration(
        server,
        stack(
            observe(metrics.rpc if metrics else None, log_all=settings.rpc_log == "all"),
            *([tracing.layer()] if tracing else []),
            *auth_layers(settings),
            admission(gate, LONG_LIVED_METHODS),
            translate_errors,
            accept_serialized,
        ),
    )
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(deps), services)
    project_service_pb2_grpc.add_ProjectServiceServicer_to_server(ProjectServicer(deps), services)
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(deps), services)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    # What reflection.enable_server_reflection does for a grpc.aio server, through the layers.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            )
        ),
        services,
    )
    server.add_generic_rpc_handlers((UnknownMethods(),))  # after every service
    port = bind(server, settings)
    if metrics is not None:
        metrics.serve(settings)
    if replicas is not None:
        await replicas.start()
    await server.start()
    feed.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    probe = DatabaseHealthProbe.for_settings(settings, health_servicer, ("", *SERVICE_NAMES))
    probe.start()
    log.info("serving on %s (port %d), database %s", settings.address, port, _safe_url(engine))
    return TaskServer(
        server,
        port,
        engine,
        health_servicer,
        deps,
        gate,
        feed,
        metrics,
        probe=probe,
        tracing=tracing,
        replicas=replicas,
    )


def _safe_url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=True)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain and shut down gracefully.

    SIGTERM (a deploy) drains for `drain_delay`; SIGINT (Ctrl-C: nobody balances a
    terminal) skips the delay.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()
    # Handlers before the server starts: a SIGTERM right after "serving on" (or during
    # start-up) must drain, not kill the process.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _first_signal, received, signum)
    # A supervisor starts workers with these signals blocked; now they can be handled.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
    running = await start_server(settings)
    first = await received
    drain_delay = settings.drain_delay if first == signal.SIGTERM else 0.0
    log.info(
        "shutting down (%s); drain %.1f s, then in-flight RPCs get %.1f s",
        signal.Signals(first).name,
        drain_delay,
        settings.shutdown_grace,
    )
    if await running.drain(settings.shutdown_grace, drain_delay=drain_delay):
        await running.feed.stop()
        if running.tracing is not None:
            await running.tracing.shutdown()  # exports the last calls' spans before exit
        await running.engine.dispose()
        log.info("stopped")
        exit_drained()
    await running.server.stop(0)  # the grace is over: cancel what still runs
    await running.release()
    log.info("stopped")


def _first_signal(received: asyncio.Future[int], signum: int) -> None:
    if not received.done():
        received.set_result(signum)
