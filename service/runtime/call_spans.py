"""A server span per API call: the caller's W3C trace context in; status, request id, principal.

A handler layer (service.api.handler_layers), wrapped once per method at registration
like the others, rather than opentelemetry-instrumentation-grpc's aio interceptor,
which builds a new handler and a proxy context on every call and reads the status
only from abort()/set_code() on its proxy (a cancelled call or a passed deadline is
recorded as OK). The README's Tracing section says more.

The span is made current for the rest of the call's task, and never detached: each
RPC runs in a task of its own whose context dies with it, and a stream's generator
may be finalised from another context, where detaching fails. So the SQL statement
spans (statement_spans) become its children and every log line written while the
call runs, the outer layer's "rpc finished" line included, carries its ids.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from service.api.call_context import current_principal, current_request_id
from service.api.handler_layers import Layer, replace_behavior
from service.api.servicers.dependencies import actor_of
from service.runtime.auth import OPEN_SERVICES

# One definition of the status grpc sends for a call that ended one way or another.
from service.runtime.observability import _failure_code, _remaining, _success_code

Context = Any  # grpc.aio.ServicerContext (grpc ships no type hints)
Behavior = Callable[[Any, Any], Any]

STATUS_CODE = "rpc.grpc.status_code"
REQUEST_ID = "taskservice.request_id"
PRINCIPAL = "enduser.id"
# The semantic conventions for gRPC servers: only these codes are the server's fault
# (span status ERROR); others, like NOT_FOUND or INVALID_ARGUMENT, leave it unset.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# Probes and tooling are not traced: a health check every few seconds is noise.
UNTRACED_SERVICES = OPEN_SERVICES
_DEADLINE_SLACK_S = 0.05  # as observability: the client's reset can beat our clock


@dataclass(frozen=True, slots=True)
class _Method:
    """What every span of one method shares: its name and constant attributes."""

    name: str
    attributes: dict[str, str]


@dataclass(slots=True)
class _CallSpan:
    """One call's span, ended once with the status the call ended with."""

    span: Span
    recording: bool
    actor: str = ""
    deadline: float | None = None
    principal: str | None = None
    sent: int = 0
    ended: bool = False

    def note_principal(self) -> None:
        """Remember the authenticated principal (the auth layer inside has run by now)."""
        self.principal = current_principal() or self.principal

    def sent_one(self) -> None:
        """One stream message sent: one event, never a span per row."""
        self.sent += 1
        if self.recording:
            self.span.add_event(
                "rpc.message", {"rpc.message.type": "SENT", "rpc.message.id": self.sent}
            )

    def end(self, code: grpc.StatusCode) -> None:
        """Record the final status and end the span (later calls do nothing)."""
        if self.ended:
            return
        self.ended = True
        if self.recording:
            span = self.span
            span.set_attributes(
                {STATUS_CODE: code.value[0], PRINCIPAL: self.principal or self.actor}
            )
            if code in SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, code.name))
        self.span.end()

    def rpc_done(self, _context: Context) -> None:
        """Done callback: a stream that ends before its generator did was cancelled.

        Touches nothing of the finished call's context: that can crash grpc.
        """
        if self.ended:
            return
        late = self.deadline is not None and time.monotonic() >= self.deadline - _DEADLINE_SLACK_S
        self.end(grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED)


def trace_calls(tracer: Tracer) -> Layer:
    """The handler layer that gives each API call a server span (health, reflection: none)."""

    def layer(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        name = method.lstrip("/")
        service, _, rpc = name.partition("/")
        if service in UNTRACED_SERVICES:
            return handler
        spec = _Method(name, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc})

        def wrap(behavior: Behavior) -> Behavior:
            if inspect.isasyncgenfunction(behavior):
                return _traced_stream(behavior, tracer, spec)
            if inspect.iscoroutinefunction(behavior):
                return _traced_call(behavior, tracer, spec)
            return behavior  # a sync handler runs on a thread pool; none exist here

        return replace_behavior(handler, wrap)

    return layer


def _start(tracer: Tracer, method: _Method, context: Context) -> _CallSpan:
    """Start the call's span as a child of the caller's, and make it current."""
    metadata = context.invocation_metadata() or ()
    # traceparent, tracestate, baggage: whatever OTEL_PROPAGATORS names (W3C by default).
    parent = propagate.extract({key: value for key, value in metadata if isinstance(value, str)})
    span = tracer.start_span(method.name, parent, SpanKind.SERVER, method.attributes)
    otel_context.attach(trace.set_span_in_context(span, parent))
    call = _CallSpan(span, span.is_recording())
    if call.recording:  # an unsampled call pays for nothing more
        request_id = current_request_id.get()
        if request_id is not None:
            span.set_attribute(REQUEST_ID, request_id)
        call.actor = actor_of(context)
        remaining = context.time_remaining()
        call.deadline = None if remaining is None else time.monotonic() + remaining
    return call


def _traced_call(behavior: Behavior, tracer: Tracer, method: _Method) -> Behavior:
    """Unary responses (and streams written with context.write(): no message events)."""

    async def traced(request: Any, context: Context) -> Any:
        call = _start(tracer, method, context)
        try:
            response = await behavior(request, context)
        except BaseException as error:
            call.note_principal()
            call.end(_failure_code(error, context, context.time_remaining))
            raise
        call.note_principal()
        call.end(_success_code(context))
        return response

    return traced


def _traced_stream(behavior: Behavior, tracer: Tracer, method: _Method) -> Behavior:
    """Streams that yield: an event per message; the done callback ends a cancelled one."""

    async def traced(request: Any, context: Context) -> AsyncIterator[Any]:
        call = _start(tracer, method, context)
        # A cancelled client cancels grpc's task while it writes, not this generator,
        # which only learns of it when it is garbage-collected.
        context.add_done_callback(call.rpc_done)
        try:
            async for response in behavior(request, context):
                if not call.sent:
                    call.note_principal()
                yield response
                call.sent_one()  # resumed, so grpc has written it
        except BaseException as error:  # GeneratorExit too: closed before the end
            if not call.ended:  # else the call is over: its context must not be touched
                call.note_principal()
                call.end(_failure_code(error, context, lambda: _remaining(call.deadline)))
            raise
        call.note_principal()
        call.end(_success_code(context))

    return traced
