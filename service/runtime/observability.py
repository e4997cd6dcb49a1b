"""Per-RPC observability as one handler layer: request id, one log line and metrics per RPC.

It is the outermost layer (service.api.handler_layers), so it sees the final status of
every RPC, including those authentication refuses and errors the translator maps.
Servicers know nothing of it. One wrapper per RPC does all three jobs, so each
RPC pays for one clock read pair and one status lookup.

Everything the log line needs from the call (peer, request id, claimed actor, the
deadline of a stream) is read when the call starts. A stream can end after its
handler stopped running (a cancel while gRPC flow control holds it, a deadline that
passes mid-stream): it is then recorded from a done callback or while its generator
is finalised, and touching the ServicerContext there (`peer()` above all, which reads
the already released core call) crashes the process inside cygrpc.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import grpc

from service.api.call_context import (
    ACTOR_KEY,
    REQUEST_ID_KEY,
    Caller,
    begin_call,
    claimed_actor_value,
    current_request_id,
)
from service.api.handler_layers import Layer, replace_behavior
from service.api.servicers.dependencies import deadline_of
from service.runtime.metrics import MethodMetrics, RpcMetrics

log = logging.getLogger(__name__)
__all__ = ["REQUEST_ID_KEY", "observe"]

Context = Any  # grpc.aio.ServicerContext (grpc ships no type hints)
Behavior = Callable[[Any, Any], Any]
# A caller's id is kept if it is plain visible ASCII of sane length; else we make one.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# A client past its deadline resets the stream itself; that reset can beat our own
# copy of the deadline by a few milliseconds.
_DEADLINE_SLACK_S = 0.05
_GRPC_TYPES = {
    # (request_streaming, response_streaming) -> go-grpc-prometheus grpc_type
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


def request_id_of(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The caller's x-request-id if usable, else a new uuid4."""
    return _read_metadata(metadata)[0]


def _read_metadata(metadata: Iterable[tuple[str, Any]] | None) -> tuple[str, Caller]:
    """The request id (the caller's if usable, else a new uuid4) and the claimed actor,
    in one pass over the metadata."""
    request_id: str | None = None
    claimed: str | None = None
    seen_request_id = False
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and not seen_request_id:
            seen_request_id = True
            if isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value):
                request_id = value
        elif key == ACTOR_KEY and claimed is None:
            claimed = claimed_actor_value(value)
    return request_id or str(uuid.uuid4()), Caller(claimed)


@dataclass(frozen=True, slots=True)
class _Method:
    """What every RPC of one method shares: its name, its metrics, whether OK calls log."""

    name: str
    metrics: MethodMetrics | None
    log_all: bool


@dataclass(slots=True)
class _Rpc:
    """One RPC: what its log line and metrics need, all read while the call runs."""

    method: _Method
    request_id: str
    caller: Caller
    peer: str
    # When a stream's caller stops waiting (time.monotonic()); unary calls read their
    # deadline only if they fail, while still running (time_remaining() costs ~4 µs).
    deadline: float | None = None
    sent: int = 0
    finished: bool = False
    started: float = 0.0

    def begin(self, context: Context) -> None:
        """Start the clock, publish the request id (context and trailers), count the start."""
        # Not reset: the RPC's task context dies with it.
        current_request_id.set(self.request_id)
        begin_call(self.caller)
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        if self.method.metrics is not None:
            self.method.metrics.started.inc()
        self.started = perf_counter()

    def finish_unfinished(self, _context: Context) -> None:
        """Done callback: an RPC that ends before its handler did was cancelled.

        It runs after the RPC ended, so it must not touch `_context` (see the module doc).
        """
        if not self.finished:
            _finish(self, _cut_short_code(self.deadline))

    def sent_one(self) -> None:
        """Count one stream message the server has sent."""
        self.sent += 1
        if self.method.metrics is not None:
            self.method.metrics.msg_sent.inc()


def observe(metrics: RpcMetrics | None, *, log_all: bool = False) -> Layer:
    """The outermost handler layer: request id in and out, metrics, and a log line for
    each RPC that fails (every RPC with `log_all`).

    Writing a line for every successful call cost ~20% of a GetTask's server CPU in the
    perf bench; metrics already count and time those.
    """

    def layer(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        grpc_type = _GRPC_TYPES[handler.request_streaming, handler.response_streaming]
        method_metrics = metrics.method(method, grpc_type) if metrics is not None else None
        observed = _Method(method, method_metrics, log_all)
        streaming: bool = handler.response_streaming

        def wrap(behavior: Behavior) -> Behavior:
            if inspect.isasyncgenfunction(behavior):
                return _observe_generator(behavior, observed)
            if inspect.iscoroutinefunction(behavior):
                return _observe_coroutine(behavior, observed, streaming=streaming)
            return behavior  # a sync handler runs on a thread pool; none exist here

        return replace_behavior(handler, wrap)

    return layer


def _start(method: _Method, context: Context) -> _Rpc:
    request_id, caller = _read_metadata(context.invocation_metadata())
    rpc = _Rpc(method, request_id, caller, context.peer())
    rpc.begin(context)
    return rpc


def _observe_coroutine(behavior: Behavior, method: _Method, *, streaming: bool) -> Behavior:
    """Unary responses, and streams written with context.write() (like Health.Watch)."""

    async def observed(request: Any, context: Context) -> Any:
        rpc = _start(method, context)
        inner = _WriteCountingContext(context, rpc) if streaming else context
        try:
            response = await behavior(request, inner)
        except BaseException as error:
            # Still inside the call's own task: the context may be read.
            _finish(rpc, _failure_code(error, context, context.time_remaining))
            raise
        _finish(rpc, _success_code(context))
        return response

    return observed


def _observe_generator(behavior: Behavior, method: _Method) -> Behavior:
    """Streams that yield: count messages, measure until the stream ends."""

    async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
        rpc = _start(method, context)
        rpc.deadline = deadline_of(context)
        # A cancelled client cancels grpc's task while it writes, not this generator,
        # which only learns of it when it is finalised; the done callback records the
        # cancellation as soon as the RPC ends. Neither may touch the context.
        context.add_done_callback(rpc.finish_unfinished)
        try:
            async for response in behavior(request, context):
                yield response
                rpc.sent_one()  # resumed, so grpc has written it
        except (GeneratorExit, asyncio.CancelledError):  # closed or cancelled before the end
            _finish(rpc, _cut_short_code(rpc.deadline))
            raise
        except BaseException as error:  # raised by the handler, inside the call's task
            _finish(rpc, _failure_code(error, context, lambda: _remaining(rpc.deadline)))
            raise
        _finish(rpc, _success_code(context))

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


def _failure_code(
    error: BaseException, context: Context, time_remaining: Callable[[], float | None]
) -> grpc.StatusCode:
    """The status grpc sends for an RPC that ended with `error` (called in the RPC's task)."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return _cancel_code(time_remaining())
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code  # aborted, or set_code() before raising
    return grpc.StatusCode.UNKNOWN  # what grpc.aio answers for an unhandled exception


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _cut_short_code(deadline: float | None) -> grpc.StatusCode:
    """The code of a stream that ended before its handler did, from the deadline read
    when it started."""
    return _cancel_code(_remaining(deadline))


def _cancel_code(remaining: float | None) -> grpc.StatusCode:
    """CANCELLED, or DEADLINE_EXCEEDED when the deadline is what ended the RPC."""
    if remaining is not None and remaining <= _DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _finish(rpc: _Rpc, code: grpc.StatusCode) -> None:
    """Record the RPC once: metrics, then the log line. Never touches the context."""
    if rpc.finished:
        return
    rpc.finished = True
    seconds = perf_counter() - rpc.started
    if rpc.method.metrics is not None:
        rpc.method.metrics.handled(code, seconds)
    if (rpc.method.log_all or code is not grpc.StatusCode.OK) and log.isEnabledFor(logging.INFO):
        _log_rpc(rpc, code, seconds)


def _log_rpc(rpc: _Rpc, code: grpc.StatusCode, seconds: float) -> None:
    fields = {
        "method": rpc.method.name,
        "code": code.name,
        "duration_ms": round(seconds * 1000, 3),
        "peer": rpc.peer,
        "principal": rpc.caller.actor,
        "request_id": rpc.request_id,
    }
    if rpc.sent:
        fields["messages_sent"] = rpc.sent
    log.info("rpc finished", extra={"fields": fields})
