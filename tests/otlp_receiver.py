"""A real OTLP/gRPC trace receiver for tests: opentelemetry-proto's TraceService on a port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR
STATUS_UNSET = trace_pb2.Status.STATUS_CODE_UNSET


def value_of(value: common_pb2.AnyValue) -> Any:
    """An attribute's value as Python (strings, ints, floats, bools, lists)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes_of(attributes: Any) -> dict[str, Any]:
    """A span's (or event's, or resource's) attributes as a dict."""
    return {attribute.key: value_of(attribute.value) for attribute in attributes}


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, with the service that sent it."""

    service: str
    span: trace_pb2.Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes_of(self.span.attributes)

    def texts(self) -> list[str]:
        """Every string this span carries: name, attribute and event values, status."""
        found = [self.name, self.span.status.message]
        for attributes in (self.span.attributes, *(e.attributes for e in self.span.events)):
            found += [str(value) for value in attributes_of(attributes).values()]
        found += [event.name for event in self.span.events]
        return found


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it; tests wait on conditions over them."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._changed = asyncio.Condition()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, _context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        async with self._changed:
            self.requests += 1
            for resource_spans in request.resource_spans:
                service = attributes_of(resource_spans.resource.attributes).get("service.name")
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [ReceivedSpan(str(service), s) for s in scope_spans.spans]
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(
        self, condition: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0
    ) -> list[ReceivedSpan]:
        """Wait until `condition(spans)` holds (never a fixed delay); fail after `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: condition(self.spans))
        return list(self.spans)

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of one trace, in arrival order."""
        return [span for span in self.spans if span.trace_id == trace_id]


@asynccontextmanager
async def trace_receiver() -> AsyncIterator[tuple[TraceReceiver, str]]:
    """A receiver listening on a free loopback port → (receiver, http://127.0.0.1:port)."""
    server = grpc.aio.server()
    receiver = TraceReceiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        await server.stop(None)
