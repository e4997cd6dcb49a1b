"""Admission control: how many RPCs execute at once, who waits, who is refused, and draining.

One gate per process. A unary RPC holds a slot while its handler runs; above
`limit` it waits in a FIFO queue while its deadline allows, and when the queue is full
(or its deadline would pass first) it is refused with RESOURCE_EXHAUSTED, ErrorInfo
SERVER_OVERLOADED and RetryInfo. A server stream holds a slot only while it reads a
batch (its servicer asks through `Dependencies.admission`), never while gRPC flow
control or the client holds a message, so open streams cannot starve unary calls; a
running stream's next batch always queues (it was admitted already). Health checks and
reflection pass untouched, and `exempt` methods (long-lived, mostly idle streams)
never take a slot.

The gate also drains: once `stop_accepting()` is called, new calls are refused with
UNAVAILABLE (SERVER_SHUTTING_DOWN), which retry policies retry elsewhere, while every
call already received (queued ones too) runs to its end; `wait_idle()` tells when (see
service.runtime.shutdown).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from time import perf_counter
from typing import Any

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from service.api.errors import abort_with
from service.api.handler_layers import Layer, replace_behavior
from service.runtime.metrics import AdmissionMetrics
from service.storage.errors import ResourceExhausted, Unavailable

Behavior = Callable[[Any, Any], Any]
Remaining = Callable[[], float | None]

# Probes and tooling: never queued, never refused (health must say NOT_SERVING while
# the server drains).
UNGATED_SERVICES = frozenset(
    {health.SERVICE_NAME, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"}
)
# A refusal must reach the client before its deadline does, or it sees DEADLINE_EXCEEDED.
_DEADLINE_MARGIN_S = 0.01
_RETRY_DELAY_BOUNDS_S = (0.05, 5.0)
_HOLD_WEIGHT = 0.05  # of each new sample in the moving average of a slot's hold time
_INITIAL_HOLD_S = 0.002
# Calls of an exempt method (and the read-ahead tasks they start) take no slots.
_slotless: ContextVar[bool] = ContextVar("slotless", default=False)


class AdmissionGate:
    """Slots for executing RPCs, a bounded FIFO queue for the rest, and the drain switch."""

    def __init__(
        self, limit: int, queue_limit: int, metrics: AdmissionMetrics | None = None
    ) -> None:
        self.limit = limit
        self.queue_limit = queue_limit
        self._metrics = metrics
        self._executing = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._hold_s = _INITIAL_HOLD_S  # how long a slot is held, on average
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepting = True

    @property
    def executing(self) -> int:
        """Slots in use."""
        return self._executing

    @property
    def queued(self) -> int:
        """Calls and batches waiting for a slot."""
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        """Gated RPCs received and not yet ended (queued, running or streaming)."""
        return self._in_flight

    # --- slots --------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a free slot if nobody waits for one (the path of an unloaded server)."""
        if self._executing < self.limit and not self._waiters:
            self._executing += 1
            return True
        return False

    async def acquire(self, remaining: Remaining, *, bounded: bool = True) -> None:
        """Take a slot, waiting in line while the deadline allows; ResourceExhausted when
        the queue is full (`bounded`) or the deadline would pass first."""
        if self.try_acquire():
            return
        if bounded and len(self._waiters) >= self.queue_limit:
            raise self._refuse("queue_full", "the admission queue is full")
        budget = remaining()
        if budget is not None:
            budget -= _DEADLINE_MARGIN_S
            if budget <= self._estimated_wait(len(self._waiters) + 1):
                raise self._refuse("deadline", "the deadline would pass before a slot frees")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        queued_at = perf_counter()
        try:
            async with asyncio.timeout(budget):
                await waiter
        except BaseException as error:
            self._leave_queue(waiter)
            if isinstance(error, TimeoutError):
                raise self._refuse("deadline", "no slot freed before the deadline") from None
            raise
        if self._metrics is not None:
            self._metrics.wait_seconds.observe(perf_counter() - queued_at)

    def release(self, held_since: float) -> None:
        """Give a slot back (held since perf_counter() `held_since`): to the first waiter."""
        held = perf_counter() - held_since
        self._hold_s += _HOLD_WEIGHT * (held - self._hold_s)
        self._hand_on()

    def _hand_on(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; `executing` is unchanged
                return
        self._executing -= 1

    def _leave_queue(self, waiter: asyncio.Future[None]) -> None:
        """A waiter gives up (deadline, cancel): out of the line, or pass on the slot it
        was handed at the same moment."""
        if waiter.done() and not waiter.cancelled():
            self._hand_on()
            return
        waiter.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    @asynccontextmanager
    async def slot(self, remaining: Remaining, *, bounded: bool = True) -> AsyncIterator[None]:
        """Hold a slot for the block (a stream's batch read); none for exempt methods."""
        if _slotless.get():
            yield
            return
        await self.acquire(remaining, bounded=bounded)
        held_since = perf_counter()
        try:
            yield
        finally:
            self.release(held_since)

    def _estimated_wait(self, position: int) -> float:
        """Seconds until the `position`-th waiter gets a slot, if slots keep their pace."""
        return position / self.limit * self._hold_s

    def _refuse(self, cause: str, why: str) -> ResourceExhausted:
        if self._metrics is not None:
            self._metrics.rejected.labels(cause).inc()
        low, high = _RETRY_DELAY_BOUNDS_S
        delay = min(high, max(low, self._estimated_wait(len(self._waiters) + 1)))
        return ResourceExhausted(
            "SERVER_OVERLOADED",
            f"server overloaded: {why} ({self._executing} executing, "
            f"{len(self._waiters)} queued); retry in {delay:.2f} s",
            retry_delay=delay,
            cause=cause,
        )

    # --- calls and draining -------------------------------------------------------

    def admit(self) -> None:
        """Count a new call in flight; Unavailable once the server stopped accepting."""
        if not self.accepting:
            if self._metrics is not None:
                self._metrics.rejected.labels("draining").inc()
            raise Unavailable(
                "SERVER_SHUTTING_DOWN", "server is shutting down; retry (another replica)"
            )
        self._in_flight += 1
        self._idle.clear()

    def call_done(self, _context: Any) -> None:
        """Done callback of a call counted by admit(): grpc has sent its status.

        Counting calls until then (not until their handler returns) means a drained
        server has no response left to send. It runs after the RPC ended, so it must
        not touch the context.
        """
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    def stop_accepting(self) -> None:
        """Refuse every call from now on; those already received carry on."""
        self.accepting = False

    async def wait_idle(self) -> None:
        """Return once no gated call is in flight."""
        await self._idle.wait()


def admission(gate: AdmissionGate, exempt: Iterable[str] = ()) -> Layer:
    """The handler layer that puts every call of the API through `gate`.

    `exempt` names methods ("/package.Service/Method") that never take a slot; they are
    still refused while the server drains and waited for when it stops.
    """
    slotless = frozenset(exempt)

    def layer(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method.strip("/").split("/")[0] in UNGATED_SERVICES:
            return handler
        exempt_method = method in slotless
        if handler.response_streaming:
            return replace_behavior(handler, lambda b: _gated_stream(b, gate, exempt_method))
        return replace_behavior(handler, lambda b: _gated_call(b, gate, exempt_method))

    return layer


def _gated_call(behavior: Behavior, gate: AdmissionGate, exempt: bool) -> Behavior:
    """A unary response: the handler runs holding a slot."""

    async def gated(request: Any, context: Any) -> Any:
        await _admit_or_abort(gate, context)
        context.add_done_callback(gate.call_done)
        if exempt:
            _slotless.set(True)
            return await behavior(request, context)
        if not gate.try_acquire():
            await _acquire_or_abort(gate, context)
        held_since = perf_counter()
        try:
            return await behavior(request, context)
        finally:
            gate.release(held_since)

    return gated


def _gated_stream(behavior: Behavior, gate: AdmissionGate, exempt: bool) -> Behavior:
    """A server stream: admitted and counted, but it holds slots only for its batch reads."""

    if not inspect.isasyncgenfunction(behavior):
        raise TypeError("gated server streams must be async generators")

    async def gated(request: Any, context: Any) -> AsyncIterator[Any]:
        await _admit_or_abort(gate, context)
        context.add_done_callback(gate.call_done)
        if exempt:
            _slotless.set(True)
        async for response in behavior(request, context):
            yield response

    return gated


async def _admit_or_abort(gate: AdmissionGate, context: Any) -> None:
    try:
        gate.admit()
    except Unavailable as error:
        await abort_with(context, error)


async def _acquire_or_abort(gate: AdmissionGate, context: Any) -> None:
    try:
        await gate.acquire(context.time_remaining)
    except ResourceExhausted as error:
        await abort_with(context, error)
