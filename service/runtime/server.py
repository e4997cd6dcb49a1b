"""Wiring: engine, servicers, reflection, health, error translation, graceful shutdown."""

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
from service.api.errors import translate_errors
from service.api.handler_layers import LayeredRegistration, stack
from service.api.pagination import PageTokens
from service.api.serialized import accept_serialized
from service.api.servicers.dependencies import Dependencies
from service.api.servicers.projects import ProjectServicer
from service.api.servicers.tasks import TaskServicer
from service.api.servicers.workers import WorkerServicer
from service.runtime.auth import auth_layers
from service.runtime.health_probe import DatabaseHealthProbe
from service.runtime.metrics import Metrics
from service.runtime.observability import observe
from service.runtime.transport import PortInUse, bind, server_options
from service.settings import Settings
from service.storage.change_feed import ChangeFeed, feed_config
from service.storage.database import create_engine, make_session_factory
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


@dataclass
class TaskServer:
    """A started server and what must be released when it stops."""

    server: grpc.aio.Server
    port: int
    engine: AsyncEngine
    health: health.aio.HealthServicer
    deps: Dependencies
    feed: ChangeFeed
    metrics: Metrics | None = None
    probe: DatabaseHealthProbe | None = None

    @property
    def metrics_port(self) -> int:
        """The bound /metrics port; 0 when metrics are off."""
        return self.metrics.port if self.metrics else 0

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace`, release the pool."""
        self.deps.shutting_down.set()
        # Watch streams never end by themselves: end them now, each with its cursor.
        self.feed.shutdown()
        if self.probe is not None:
            await self.probe.stop()  # first, so nothing can report SERVING again
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.feed.stop()
        await self.engine.dispose()
        if self.metrics is not None:
            await self.metrics.stop()


async def start_server(settings: Settings) -> TaskServer:
    """Build and start the server on `settings.address`; PortInUse if it is taken."""
    engine = create_engine(settings)
    session_factory = make_session_factory(engine)
    secret = settings.page_token_secret.get_secret_value()
    feed = ChangeFeed(session_factory, feed_config(settings))
    deps = Dependencies(
        session_factory=session_factory,
        page_tokens=PageTokens(secret),
        feed_cursors=FeedCursors(secret),
        feed=feed,
        feed_bookmark_interval=settings.feed_bookmark_interval,
    )
    metrics = Metrics(engine) if settings.metrics_port else None
    server = grpc.aio.server(options=server_options(settings))
    # Every handler is wrapped once, outermost first: logs and metrics see the final
    # status of every RPC, authentication runs before any handler, the error translator
    # innermost. (Layers at registration, not interceptors: see handler_layers.)
    services = LayeredRegistration(
        server,
        stack(
            observe(metrics.rpc if metrics else None, log_all=settings.rpc_log == "all"),
            *auth_layers(settings),
            translate_errors,
            accept_serialized,
        ),
    )
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(deps), services)
    project_service_pb2_grpc.add_ProjectServiceServicer_to_server(ProjectServicer(deps), services)
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(deps), services)
    health_servicer = health.aio.HealthServicer()
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
    port = bind(server, settings)
    if metrics is not None:
        metrics.serve(settings)
    await server.start()
    feed.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    probe = DatabaseHealthProbe.for_settings(settings, health_servicer, ("", *SERVICE_NAMES))
    probe.start()
    log.info("serving on %s (port %d), database %s", settings.address, port, _safe_url(engine))
    return TaskServer(server, port, engine, health_servicer, deps, feed, metrics, probe=probe)


def _safe_url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=True)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # A supervisor starts workers with these signals blocked; now they can be handled.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
    await stop.wait()
    log.info("shutting down; in-flight RPCs get %.1f s", settings.shutdown_grace)
    await running.stop(settings.shutdown_grace)
    log.info("stopped")
