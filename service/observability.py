"""Per-RPC observability as one interceptor: request id, one log line and metrics per RPC.

It is the outermost interceptor, so it sees the final status of every RPC,
including those the auth interceptor refuses and errors the translator maps.
Servicers know nothing of it. One wrapper per RPC does all three jobs, so each
RPC pays for one clock read pair and one status lookup.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import grpc

from service.logs import REQUEST_ID_KEY, current_request_id
from service.metrics import MethodMetrics, RpcMetrics
from service.servicers.dependencies import actor_of

log = logging.getLogger(__name__)
__all__ = ["REQUEST_ID_KEY", "ObservabilityInterceptor", "observability_interceptors"]

Context = Any  # grpc.aio.ServicerContext (grpc ships no type hints)
Behavior = Callable[[Any, Any], Any]
# A caller's id is kept if it is plain visible ASCII of sane length; else we make one.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# A client past its deadline resets the stream itself; that reset can beat our own
# copy of the deadline by a few milliseconds.
_DEADLINE_SLACK_S = 0.05
_ARITIES = {
    # (request_streaming, response_streaming) -> handler attribute, go-grpc-prometheus grpc_type
    (False, False): ("unary_unary", "unary"),
    (False, True): ("unary_stream", "server_stream"),
    (True, False): ("stream_unary", "client_stream"),
    (True, True): ("stream_stream", "bidi_stream"),
}


def observability_interceptors(metrics: RpcMetrics | None) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors that log and (when `metrics` is given) measure every RPC."""
    return [ObservabilityInterceptor(metrics)]


def request_id_of(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The caller's x-request-id if usable, else a new uuid4."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            if isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value):
                return value
            break
    return str(uuid.uuid4())


# (the handler attribute that holds the behaviour, the method's metrics)
_Shape = tuple[str, "MethodMetrics | None"]


@dataclass(slots=True)
class _Rpc:
    """One RPC (a handler runs once per intercept): what its log line and metrics need."""

    method: str
    request_id: str
    metrics: MethodMetrics | None
    peer: str = ""
    sent: int = 0
    finished: bool = False
    started: float = 0.0

    def begin(self, context: Context) -> None:
        """Start the clock, publish the request id (context and trailers), count the start."""
        current_request_id.set(self.request_id)  # not reset: the RPC's task context dies with it
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        if self.metrics is not None:
            self.metrics.started.inc()
        if log.isEnabledFor(logging.INFO):
            self.peer = context.peer()
        self.started = perf_counter()

    def finish_unfinished(self, context: Context) -> None:
        """Done callback: an RPC that ends before its handler did was cancelled."""
        if not self.finished:
            _finish(self, context, _cancel_code(context))

    def sent_one(self) -> None:
        """Count one stream message the server has sent."""
        self.sent += 1
        if self.metrics is not None:
            self.metrics.msg_sent.inc()


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler: request id in and out, one log line, Prometheus metrics."""

    def __init__(self, metrics: RpcMetrics | None) -> None:
        self._metrics = metrics
        # Per method; only registered methods get here, so it stays bounded.
        self._shapes: dict[str, _Shape] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        request_id = request_id_of(handler_call_details.invocation_metadata)
        # Set now too, so inner interceptors' lines (an auth refusal) carry it.
        current_request_id.set(request_id)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED; no label to invent
        method: str = handler_call_details.method
        shape = self._shapes.get(method)
        if shape is None:
            shape = self._shapes[method] = self._shape_of(method, handler)
        attribute, metrics = shape
        rpc = _Rpc(method, request_id, metrics)
        # The behaviour itself may differ per call (auth swaps in a refusal): look at it.
        behavior = getattr(handler, attribute)
        if _is_async_generator(behavior):
            wrapped: Behavior = _observe_generator(behavior, rpc)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = _observe_coroutine(behavior, rpc, streaming=handler.response_streaming)
        else:
            return handler  # a sync handler runs on a thread pool; none exist here
        return handler._replace(**{attribute: wrapped})

    def _shape_of(self, method: str, handler: grpc.RpcMethodHandler) -> _Shape:
        """The handler attribute and metrics of a method, worked out once per method."""
        attribute, grpc_type = _ARITIES[handler.request_streaming, handler.response_streaming]
        metrics = self._metrics.method(method, grpc_type) if self._metrics is not None else None
        return attribute, metrics


def _is_async_generator(behavior: Behavior) -> bool:
    """inspect.isasyncgenfunction, with a shortcut for plain functions (every RPC asks)."""
    code = getattr(behavior, "__code__", None)
    if code is not None:
        return bool(code.co_flags & inspect.CO_ASYNC_GENERATOR)
    return inspect.isasyncgenfunction(behavior)


def _observe_coroutine(behavior: Behavior, rpc: _Rpc, *, streaming: bool) -> Behavior:
    """Unary responses, and streams written with context.write() (like Health.Watch)."""

    async def observed(request: Any, context: Context) -> Any:
        rpc.begin(context)
        inner = _WriteCountingContext(context, rpc) if streaming else context
        try:
            response = await behavior(request, inner)
        except BaseException as error:
            _finish(rpc, context, _failure_code(error, context))
            raise
        _finish(rpc, context, _success_code(context))
        return response

    return observed


def _observe_generator(behavior: Behavior, rpc: _Rpc) -> Behavior:
    """Streams that yield: count messages, measure until the stream ends."""

    async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
        rpc.begin(context)
        # A cancelled client cancels grpc's task while it writes, not this generator,
        # which only learns of it when it is garbage-collected; the done callback
        # records the cancellation as soon as the RPC ends.
        context.add_done_callback(rpc.finish_unfinished)
        try:
            async for response in behavior(request, context):
                yield response
                rpc.sent_one()  # resumed, so grpc has written it
        except BaseException as error:  # GeneratorExit too: closed before the end
            _finish(rpc, context, _failure_code(error, context))
            raise
        _finish(rpc, context, _success_code(context))

    return observed


class _WriteCountingContext:
    """The servicer context, with write() counted as a sent stream message."""

    __slots__ = ("_context", "_rpc")

    def __init__(self, context: Context, rpc: _Rpc) -> None:
        self._context = context
        self._rpc = rpc

    async def write(self, message: Any) -> None:
        """Send `message` and count it."""
        await self._context.write(message)
        self._rpc.sent_one()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _success_code(context: Context) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def _failure_code(error: BaseException, context: Context) -> grpc.StatusCode:
    """The status grpc sends for an RPC that ended with `error`."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return _cancel_code(context)
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code  # aborted, or set_code() before raising
    return grpc.StatusCode.UNKNOWN  # what grpc.aio answers for an unhandled exception


def _cancel_code(context: Context) -> grpc.StatusCode:
    """CANCELLED, or DEADLINE_EXCEEDED when the deadline is what ended the RPC."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _finish(rpc: _Rpc, context: Context, code: grpc.StatusCode) -> None:
    """Record the RPC once: metrics, then the log line."""
    if rpc.finished:
        return
    rpc.finished = True
    seconds = perf_counter() - rpc.started
    if rpc.metrics is not None:
        rpc.metrics.handled(code, seconds)
    if log.isEnabledFor(logging.INFO):
        _log_rpc(rpc, context, code, seconds)


def _log_rpc(rpc: _Rpc, context: Context, code: grpc.StatusCode, seconds: float) -> None:
    fields = {
        "method": rpc.method,
        "code": code.name,
        "duration_ms": round(seconds * 1000, 3),
        "peer": rpc.peer,
        "principal": actor_of(context),
        "request_id": rpc.request_id,
    }
    if rpc.sent:
        fields["messages_sent"] = rpc.sent
    log.info("rpc finished", extra={"fields": fields})
