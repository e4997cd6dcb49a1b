"""What tracing costs: GetTask and StreamTasks with tracing off and on (every call sampled).

    python -m bench.perf.tracing [--smoke] [--rounds N] [the perf bench's options]

Two TaskService processes on the same database, started together: one with tracing
off (the default), one with `--tracing on --tracing-sample-ratio 1` exporting over
OTLP/gRPC to a receiver in this process that counts what arrives (spans travel the
whole way: SDK, batch processor thread, protobuf, gRPC). The load alternates between
them, `--rounds` times, order flipped each round, so drift on a shared machine hits
both alike; the medians are compared. Figures: GetTask (BASIC) calls/s at the perf
bench's load shape and server CPU per call; a full StreamTasks read (tasks/s and
server CPU per stream).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.cli import say
from bench.database import drop_database, prepare_database
from bench.perf import calls
from bench.perf.config import PerfConfig
from bench.perf.loadgen import LoadGenerator
from bench.perf.tools import resolve_tools
from bench.servers import ServerProcess, service_server
from bench.streaming import consume
from taskmanager.v1 import resources_pb2

MODES = ("off", "on")


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC receiver that only counts the spans it is sent."""

    def __init__(self) -> None:
        self.spans = 0

    async def Export(self, request: Any, _context: Any) -> Any:
        self.spans += sum(
            len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


@asynccontextmanager
async def span_sink() -> AsyncIterator[tuple[SpanSink, str]]:
    """A sink on a free loopback port → (sink, http://127.0.0.1:port)."""
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
    """What one mode measured, round by round."""

    get_rates: list[float] = field(default_factory=list)  # GetTask calls/s
    get_cpu_us: list[float] = field(default_factory=list)  # server CPU µs per GetTask
    get_errors: int = 0
    stream_rates: list[float] = field(default_factory=list)  # tasks/s of a full stream
    stream_cpu_s: list[float] = field(default_factory=list)  # server CPU s per stream
    calls: int = 0  # every call this server answered (warm-up included)


@dataclass
class TracingCost:
    """Both modes, and the spans the traced server exported."""

    rounds: int
    sides: dict[str, Side]
    spans_received: int
    tasks_per_stream: int

    def report(self) -> str:
        """A markdown table: medians off and on, and what tracing costs."""
        off, on = self.sides["off"], self.sides["on"]
        rows = [
            ("GetTask (BASIC), calls/s", off.get_rates, on.get_rates, "{:,.0f}", -1),
            ("GetTask, server CPU per call (µs)", off.get_cpu_us, on.get_cpu_us, "{:,.0f}", 1),
            (
                f"StreamTasks, {self.tasks_per_stream:,} tasks, tasks/s",
                off.stream_rates,
                on.stream_rates,
                "{:,.0f}",
                -1,
            ),
            (
                "StreamTasks, server CPU per stream (s)",
                off.stream_cpu_s,
                on.stream_cpu_s,
                "{:.3f}",
                1,
            ),
        ]
        lines = [
            f"Tracing off vs on (100% sampled, exported over OTLP/gRPC), median of {self.rounds} "
            "alternating rounds",
            "",
            "| Measurement | off | on | cost of tracing |",
            "|---|---|---|---|",
        ]
        for label, off_values, on_values, fmt, sign in rows:
            a, b = statistics.median(off_values), statistics.median(on_values)
            cost = sign * (b - a) / a * 100 if a else float("nan")
            lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {cost:+.1f}% |")
        lines += [
            "",
            f"Spans received from the traced server: {self.spans_received:,} for "
            f"{on.calls:,} calls (a server span per call, plus one per SQL statement); "
            f"GetTask errors: off {off.get_errors}, on {on.get_errors}.",
        ]
        return "\n".join(lines)


async def measure(
    cfg: PerfConfig, generator: LoadGenerator, targets: calls.Targets, rounds: int
) -> TracingCost:
    """Start both servers, warm them up, then alternate GetTask loads and full streams."""
    get = calls.get_task(targets, resources_pb2.TASK_VIEW_BASIC)
    sides = {mode: Side() for mode in MODES}
    tasks_per_stream = 0
    async with span_sink() as (sink, endpoint):
        traced = ("--tracing", "on", "--tracing-endpoint", endpoint, "--tracing-sample-ratio", "1")
        async with (
            service_server(cfg, "--tracing", "off", name="TaskService, tracing off") as off,
            service_server(cfg, *traced, name="TaskService, tracing on") as on,
        ):
            servers = {"off": off, "on": on}
            for mode, server in servers.items():
                warm = await generator.grpc(server.target, get, cfg.warmup or 0.5)
                sides[mode].calls += warm.completed
            for number in range(rounds):
                say(f"Tracing round {number + 1}/{rounds}: GetTask and StreamTasks, off and on")
                for mode in MODES if number % 2 == 0 else tuple(reversed(MODES)):
                    await _get_task(generator, servers[mode], get, cfg.duration, sides[mode])
                    tasks_per_stream = await _stream(servers[mode], cfg.batch_size, sides[mode])
        # Both servers stopped (SIGTERM): the traced one flushed its last spans on the way.
        spans = sink.spans
    return TracingCost(rounds, sides, spans, tasks_per_stream)


async def _get_task(
    generator: LoadGenerator,
    server: ServerProcess,
    call: calls.GrpcCall,
    seconds: float,
    side: Side,
) -> None:
    cpu = server.cpu_seconds()
    run = await generator.grpc(server.target, call, seconds)
    used = server.cpu_seconds() - cpu
    side.get_rates.append(run.rate)
    side.get_cpu_us.append(used / max(run.ok, 1) * 1e6)
    side.get_errors += run.errors
    side.calls += run.completed


async def _stream(server: ServerProcess, batch_size: int, side: Side) -> int:
    cpu = server.cpu_seconds()
    received = await consume(server.target, batch_size)
    side.stream_cpu_s.append(server.cpu_seconds() - cpu)
    side.stream_rates.append(received.tasks / received.seconds)
    side.calls += 1
    return received.tasks


async def run(cfg: PerfConfig, rounds: int) -> TracingCost:
    """Prepare the database (as the perf bench does), measure, drop it if asked."""
    tools = resolve_tools(cfg, say)
    try:
        say(f"Preparing database {cfg.database} ({cfg.tasks:,} tasks)")
        await prepare_database(cfg)
        targets = await calls.pick_targets(cfg, cfg.connections)
        with tempfile.TemporaryDirectory(prefix="bench-tracing-") as workdir:
            generator = LoadGenerator(tools, Path(workdir), cfg.concurrency, cfg.connections)
            return await measure(cfg, generator, targets, rounds)
    finally:
        if cfg.drop_after:
            await drop_database(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.perf.tracing`: the perf bench's options, plus --rounds."""
    from bench.perf.main import _parser, config_from  # the perf bench's own command line

    parser = _parser()
    parser.prog = "python -m bench.perf.tracing"
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (--smoke: 1)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.smoke else 5)
    try:
        cfg = config_from(args)
    except ValueError as error:
        sys.stderr.write(f"{error}\n")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    say("\n" + asyncio.run(run(cfg, rounds)).report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
