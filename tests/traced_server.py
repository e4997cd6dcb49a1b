"""A server with tracing on, exporting to a real OTLP/gRPC receiver in the test process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from service.runtime.server import TaskServer, start_server
from service.settings import Settings
from taskmanager.v1 import project_service_pb2_grpc, task_service_pb2_grpc
from tests.otlp_receiver import ReceivedSpan, TraceReceiver, trace_receiver
from tests.trace_callers import Caller


@dataclass
class Traced:
    """A server with tracing on, the receiver its spans go to, and stubs."""

    server: TaskServer
    receiver: TraceReceiver
    endpoint: str  # where the receiver listens: http://127.0.0.1:<port>
    tasks: task_service_pb2_grpc.TaskServiceStub
    projects: project_service_pb2_grpc.ProjectServiceStub

    async def call_spans(self, caller: Caller) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
        """The server span of the caller's call (once arrived) and its statement spans.

        Statement spans end before their call's span, and the exporter sends in order,
        so they have arrived once the server span has.
        """
        spans = await self.receiver.wait_for(
            lambda spans: any(s.parent_id == caller.span_id for s in spans)
        )
        (server_span,) = [s for s in spans if s.parent_id == caller.span_id]
        children = [s for s in spans if s.parent_id == server_span.span_id]
        return server_span, children


@asynccontextmanager
async def traced_server(database_url: str, **settings: Any) -> AsyncIterator[Traced]:
    """A server tracing every call, exporting to a receiver of its own every 20 ms;
    `settings` go to its Settings."""
    async with trace_receiver() as (receiver, endpoint):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")  # read when the server starts
            server = await start_server(
                Settings(
                    database_url=database_url,
                    address="127.0.0.1:0",
                    tracing="on",
                    tracing_endpoint=endpoint,
                    **settings,
                )
            )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                yield Traced(
                    server,
                    receiver,
                    endpoint,
                    task_service_pb2_grpc.TaskServiceStub(channel),
                    project_service_pb2_grpc.ProjectServiceStub(channel),
                )
        finally:
            await server.stop(grace=1)
