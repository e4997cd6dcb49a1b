"""Tracing cost: GetTask and StreamTasks on TaskService with tracing off and on (every call
sampled, exported over OTLP/gRPC to a span counter in the bench process), same database."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.core.report import Row, Section, yes
from bench.core.run import say
from bench.core.servers import ServerProcess, service_server
from bench.core.streams import read_stream
from bench.perf.calls import GrpcCall, Targets, get_task
from bench.perf.config import PerfConfig
from bench.perf.loadgen import LoadGenerator
from bench.perf.measure import sample_grpc
from bench.perf.usage import wait_for_quiet
from taskmanager.v1 import resources_pb2

NAMES = {"today": "today's code", "off": "tracing off", "on": "tracing on"}
COMPARED = (("on", "off", "on against off"), ("off", "today", "off against today's code"))
# Key, label, format; a traced server's CPU includes exporting the spans of the calls counted.
METRICS = (
    ("get_rate", "GetTask calls/s", "{:,.0f}"),
    ("get_cpu", "GetTask server CPU µs a call", "{:,.0f}"),
    ("stream_rate", "StreamTasks tasks/s", "{:,.0f}"),
    ("stream_cpu", "StreamTasks server CPU s a stream", "{:.3f}"),
)
DRAIN_TIMEOUT = 15.0  # the batch span processor exports at least every 5 s


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC receiver that only counts the spans it is sent."""

    def __init__(self) -> None:
        self.spans = 0

    async def Export(self, request: Any, _context: Any) -> Any:
        self.spans += sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@asynccontextmanager
async def span_sink() -> AsyncIterator[tuple[SpanSink, str]]:
    """A sink on a free loopback port: (sink, its http://127.0.0.1:port endpoint)."""
    server = grpc.aio.server()
    sink = SpanSink()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield sink, f"http://127.0.0.1:{port}"
    finally:
        await server.stop(None)


@dataclass
class Side:
    """What one server measured: each metric's figure, round by round."""

    figures: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: int = 0  # failed GetTasks (samples included) and incomplete streams
    spans: int = 0  # spans its calls make when traced (samples and warm-up included)


def _spread(values: list[float], fmt: str) -> str:
    """The median, and min–max: the noise a difference must beat on a shared machine."""
    low, mid, high = (fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
    return f"{mid} ({low}–{high})"


def _change(values: list[float], base: list[float]) -> str:
    """How far the median of `values` lies from that of `base`, in per cent."""
    ours, theirs = statistics.median(values), statistics.median(base)
    return f"{(ours / theirs - 1) * 100:+.1f}%" if theirs else "n/a (base 0)"


@dataclass(frozen=True)
class TracingCost:
    """Each server's figures, and how many spans reached the sink."""

    rounds: int
    sides: dict[str, Side]
    spans_received: int

    def section(self, cfg: PerfConfig) -> Section:
        """Each server's medians, tracing on against off (and off against today's code), the
        spans the traced server exported, and whether every call and stream went through."""
        title = (
            f"Tracing cost (on: every call sampled; GetTask BASIC at {cfg.concurrency} in flight "
            f"for {cfg.duration:g} s, then StreamTasks of {cfg.tasks:,} tasks; medians of "
            f"{self.rounds} alternating rounds, min–max)"
        )
        rows = []
        for key, label, fmt in METRICS:
            found = {mode: side.figures[key] for mode, side in self.sides.items()}
            rows += [Row(f"{label}, {NAMES[mode]}", _spread(v, fmt)) for mode, v in found.items()]
            rows += [
                Row(f"{label}, {name}", _change(found[mode], found[base]))
                for mode, base, name in COMPARED
                if base in found
            ]
        made, errors = self.sides["on"].spans, sum(side.errors for side in self.sides.values())
        label = "spans the traced server exported / its calls made"
        got = f"{self.spans_received:,} / {made:,}"
        rows.append(Row(label, got, "all", self.spans_received >= made))
        label = "every GetTask OK, every stream whole"
        return title, [*rows, Row(label, yes(not errors), "yes", not errors, check=True)]


class Turns:
    """The load, in turns, on servers that stay up all the while; what each one measured."""

    def __init__(
        self, cfg: PerfConfig, generator: LoadGenerator, call: GrpcCall, sink: SpanSink
    ) -> None:
        self.cfg, self.generator, self.call, self.sink = cfg, generator, call, sink
        self.sides: dict[str, Side] = {}
        self.sizes: dict[str, tuple[int, ...]] = {}

    async def warm_up(self, mode: str, server: ServerProcess) -> None:
        """Sample calls (checked, and their response sizes kept for h2load's), then warm-up."""
        side = self.sides[mode] = Side()
        sample = await sample_grpc(server.target, self.call)
        side.errors += not sample.valid
        side.spans += 2 * len(sample.codes)  # a server span and its SELECT's
        self.sizes[mode] = sample.frame_sizes
        if self.cfg.warmup:
            await self.get_task(mode, server, self.cfg.warmup, timed=False)

    async def get_task(
        self, mode: str, server: ServerProcess, seconds: float, timed: bool = True
    ) -> None:
        """GetTask under load for `seconds`; the figures count if `timed`."""
        side, cpu = self.sides[mode], server.cpu_seconds()
        run = await self.generator.grpc(server.target, self.call, seconds, self.sizes[mode])
        side.spans += 2 * run.completed
        side.errors += run.errors
        await self._drained(mode)
        if timed:
            side.figures["get_rate"].append(run.rate)
            side.figures["get_cpu"].append((server.cpu_seconds() - cpu) / max(run.ok, 1) * 1e6)

    async def stream(self, mode: str, server: ServerProcess) -> None:
        """A whole StreamTasks read; a span for the call and one for each batch's SELECT."""
        side, cpu = self.sides[mode], server.cpu_seconds()
        run = await read_stream(server, self.cfg.batch_size)
        side.spans += 1 + math.ceil(run.tasks / self.cfg.batch_size)
        side.errors += run.tasks != self.cfg.tasks
        await self._drained(mode)
        side.figures["stream_cpu"].append(server.cpu_seconds() - cpu)
        side.figures["stream_rate"].append(run.rate)

    async def _drained(self, mode: str) -> None:
        """Wait until the traced server exported what its calls so far made, so that the
        export's CPU counts for the calls that caused it and not for the next figure."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while mode == "on" and self.sink.spans < self.sides[mode].spans:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)


async def measure(cfg: PerfConfig, generator: LoadGenerator, targets: Targets) -> TracingCost:
    """Servers with tracing off and on (and today's code, if given) on one database, all up at
    once; the load takes turns between them, the order flipped each round, so drift on a
    shared machine hits each alike."""
    call = get_task(targets, resources_pb2.TASK_VIEW_BASIC)
    async with span_sink() as (sink, endpoint), AsyncExitStack() as stack:
        turns = Turns(cfg, generator, call, sink)
        servers: dict[str, ServerProcess] = {}
        if cfg.today is not None:
            today = service_server(cfg, name=f"TaskService in {cfg.today}", checkout=cfg.today)
            servers["today"] = await stack.enter_async_context(today)
        off = service_server(cfg, "--tracing", "off", name="TaskService, tracing off")
        servers["off"] = await stack.enter_async_context(off)
        traced = ("--tracing", "on", "--tracing-endpoint", endpoint, "--tracing-sample-ratio", "1")
        on = service_server(cfg, *traced, name="TaskService, tracing on")
        servers["on"] = await stack.enter_async_context(on)
        for mode, server in servers.items():
            await turns.warm_up(mode, server)
        await wait_for_quiet(cfg.quiet_wait)
        for number in range(cfg.tracing_rounds):
            say(f"Tracing cost, round {number + 1}/{cfg.tracing_rounds}: GetTask, StreamTasks")
            order = list(servers) if number % 2 == 0 else list(reversed(servers))
            for mode in order:
                await turns.get_task(mode, servers[mode], cfg.duration)
                await turns.stream(mode, servers[mode])
    # The servers stopped first: the traced one exported what it still held on SIGTERM.
    return TracingCost(cfg.tracing_rounds, turns.sides, sink.spans)
