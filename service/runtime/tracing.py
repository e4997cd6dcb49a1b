"""OpenTelemetry tracing: whether it is on, the tracer provider and its OTLP/gRPC exporter.

Off unless configured, and then free: no layer wraps the handlers and no listener
watches the engine. When on, `service.runtime.call_spans` gives every API call a
server span (child of the caller's W3C `traceparent`) and `service.runtime.statement_spans`
gives each SQL statement a client span below it. The standard OTEL_* variables
configure the SDK (exporter endpoint, headers, timeouts, sampler, batch delays,
resource); the service's own settings take precedence where they overlap.

The provider is the server's own, not the global one: several servers may run in
one process (the tests do), and shutting one down flushes its spans only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.handler_layers import Layer
from service.runtime.call_spans import trace_calls
from service.runtime.statement_spans import trace_statements
from service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

SERVICE_NAME = "taskservice"
# Any of these set means the deployment speaks OpenTelemetry (tracing=auto turns on).
_OTEL_SWITCHES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
)
_EXPORTERS = ("otlp", "console", "none")


def tracing_enabled(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this server traces: the setting, else the standard variables (auto)."""
    if settings.tracing != "auto":
        return settings.tracing == "on"
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if _exporter_names(environ) == ["none"]:
        return False
    return settings.tracing_endpoint is not None or any(environ.get(n) for n in _OTEL_SWITCHES)


@dataclass
class Tracing:
    """A running tracer provider and what the server wires from it."""

    provider: TracerProvider
    tracer: Tracer

    def layer(self) -> Layer:
        """The handler layer giving each API call its server span."""
        return trace_calls(self.tracer)

    def trace_statements(self, engine: AsyncEngine) -> None:
        """Give each SQL statement `engine` runs within a traced call a client span."""
        trace_statements(engine, self.tracer)

    async def shutdown(self) -> None:
        """Export the spans still queued, then stop (blocking: run on a thread)."""
        await asyncio.to_thread(self.provider.shutdown)


def start_tracing(settings: Settings, environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """A tracer provider exporting as configured; None when tracing is off.

    ValueError for a configuration the service cannot honour (an unknown exporter,
    OTLP over HTTP): a start-up error rather than traces silently lost.
    """
    if not tracing_enabled(settings, environ):
        return None
    # Imported only when on: the SDK and the exporter (grpc, protobuf) cost ~0.25 s.
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    exporters = [_exporter(name, settings, environ) for name in _exporter_names(environ)]
    ratio = settings.tracing_sample_ratio
    # sampler=None: the SDK reads OTEL_TRACES_SAMPLER (default: parent-based, always on).
    sampler = ParentBasedTraceIdRatio(ratio) if ratio is not None else None
    provider = TracerProvider(resource=_resource(), sampler=sampler)
    for exporter in exporters:
        if exporter is not None:
            # Batches are sent from the processor's own thread, never on the event loop;
            # OTEL_BSP_* set its delay, queue and batch sizes.
            provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info(
        "tracing on: %s, sampler %s",
        ", ".join(_exporter_names(environ)),
        provider.sampler.get_description(),
    )
    return Tracing(provider, provider.get_tracer(SERVICE_NAME, _version()))


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    unknown = [name for name in names if name not in _EXPORTERS]
    if unknown:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={','.join(unknown)} is not supported; use "
            + ", ".join(_EXPORTERS)
        )
    return names


def _exporter(name: str, settings: Settings, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if protocol != "grpc":
        raise ValueError(f"OTLP protocol {protocol!r} is not supported; traces use OTLP/gRPC")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # endpoint=None: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, or
    # localhost:4317; an http:// endpoint is plaintext, as OTEL_EXPORTER_OTLP_INSECURE says.
    return OTLPSpanExporter(endpoint=settings.tracing_endpoint)


def _resource() -> Resource:
    from opentelemetry.sdk.resources import Resource

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win; the service names itself otherwise.
    resource = Resource.create({"service.version": _version()})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    return resource


def _version() -> str:
    try:
        return metadata.version("taskservice")
    except metadata.PackageNotFoundError:
        return "unknown"
