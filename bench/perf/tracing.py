"""What tracing costs: GetTask and StreamTasks with tracing off and on (every call sampled).

    python -m bench.perf.tracing [--smoke] [--rounds N] [--today DIR] [perf bench options]

TaskService processes on the same database, started together: one with tracing off
(the default), one with `--tracing on --tracing-sample-ratio 1` exporting over
OTLP/gRPC to a receiver in this process that counts what arrives (spans travel the
whole way: SDK, batch processor thread, protobuf, gRPC), and with `--today DIR` the
service as checked out in DIR (e.g. /work/main: the code before tracing), the
reference "off" must stay within noise of. The load alternates between them,
`--rounds` times, order flipped each round, so drift on a shared machine hits all
alike; medians are compared. A traced figure's server CPU includes exporting the
spans its calls made (the bench waits for them to arrive). Figures: GetTask (BASIC)
calls/s at the perf bench's load shape and server CPU per call; a full StreamTasks
read (tasks/s and server CPU per stream).
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
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
from bench.servers import ServerProcess, free_port, service_server, stop, wait_healthy
from bench.streaming import consume
from taskmanager.v1 import resources_pb2

MODES = ("today", "off", "on")
LABELS = {"today": "today's code", "off": "tracing off", "on": "tracing on"}
DRAIN_TIMEOUT = 15.0  # the batch processor sends a partial batch every 5 s


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
    """What one server measured, round by round."""

    get_rates: list[float] = field(default_factory=list)  # GetTask calls/s
    get_cpu_us: list[float] = field(default_factory=list)  # server CPU µs per GetTask
    get_errors: int = 0
    stream_rates: list[float] = field(default_factory=list)  # tasks/s of a full stream
    stream_cpu_s: list[float] = field(default_factory=list)  # server CPU s per stream
    spans: int = 0  # spans its calls make when traced (warm-up included)


@dataclass
class TracingCost:
    """Every mode's figures, and the spans the traced server exported."""

    rounds: int
    sides: dict[str, Side]
    spans_received: int
    tasks_per_stream: int

    def report(self) -> str:
        """A markdown table: medians per mode, tracing's cost, off against today's code."""
        sides = self.sides
        rows = [
            ("GetTask (BASIC), calls/s", "get_rates", "{:,.0f}", -1),
            ("GetTask, server CPU per call (µs)", "get_cpu_us", "{:,.0f}", 1),
            (
                f"StreamTasks of {self.tasks_per_stream:,} tasks, tasks/s",
                "stream_rates",
                "{:,.0f}",
                -1,
            ),
            ("StreamTasks, server CPU per stream (s)", "stream_cpu_s", "{:.3f}", 1),
        ]
        modes = [mode for mode in MODES if mode in sides]
        costs = [("on", "off", "cost of tracing on")] + (
            [("off", "today", "off vs today")] if "today" in sides else []
        )
        lines = [
            f"Tracing off vs on (every call sampled, exported over OTLP/gRPC): medians of "
            f"{self.rounds} alternating rounds (min–max)",
            "",
            "| Measurement | "
            + " | ".join(LABELS[m] for m in modes)
            + " | "
            + " | ".join(c[2] for c in costs)
            + " |",
            "|---" * (1 + len(modes) + len(costs)) + "|",
        ]
        for label, attribute, fmt, sign in rows:
            values = {m: getattr(sides[m], attribute) for m in modes}
            medians = {m: statistics.median(values[m]) for m in modes}
            # The spread shows the noise a difference must beat on a shared machine.
            cells = [
                f"{fmt.format(medians[m])} ({fmt.format(min(values[m]))}–"
                f"{fmt.format(max(values[m]))})"
                for m in modes
            ]
            for mode, base, _ in costs:
                change = sign * (medians[mode] - medians[base]) / medians[base] * 100
                cells.append(f"{change:+.1f}%")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        errors = ", ".join(f"{LABELS[m]} {sides[m].get_errors}" for m in modes)
        lines += [
            "",
            f"Spans received from the traced server: {self.spans_received:,} of the "
            f"{sides['on'].spans:,} its calls make (a server span per call, one per SQL "
            f"statement); GetTask errors: {errors}. A cost is the share the figure got worse.",
        ]
        return "\n".join(lines)


class TracingBench:
    """The servers, the load generator and the span sink of one run."""

    def __init__(
        self, cfg: PerfConfig, generator: LoadGenerator, sink: SpanSink, rounds: int
    ) -> None:
        self.cfg = cfg
        self.generator = generator
        self.sink = sink
        self.rounds = rounds
        self.sides: dict[str, Side] = {}
        self.tasks_per_stream = 0

    async def measure(self, servers: dict[str, ServerProcess], get: calls.GrpcCall) -> None:
        """Warm every server up, then alternate GetTask loads and full streams."""
        self.sides = {mode: Side() for mode in servers}
        for mode, server in servers.items():
            await self._get_task(mode, server, get, self.cfg.warmup or 0.5, timed=False)
        for number in range(self.rounds):
            say(f"Tracing round {number + 1}/{self.rounds}: GetTask and StreamTasks")
            order = list(servers) if number % 2 == 0 else list(reversed(servers))
            for mode in order:
                await self._get_task(mode, servers[mode], get, self.cfg.duration)
                await self._stream(mode, servers[mode])

    async def _get_task(
        self,
        mode: str,
        server: ServerProcess,
        call: calls.GrpcCall,
        seconds: float,
        timed: bool = True,
    ) -> None:
        side = self.sides[mode]
        cpu = server.cpu_seconds()
        run = await self.generator.grpc(server.target, call, seconds)
        side.spans += 2 * run.completed  # the call and its one SELECT
        await self._drained(mode)
        if timed:
            side.get_rates.append(run.rate)
            side.get_cpu_us.append((server.cpu_seconds() - cpu) / max(run.ok, 1) * 1e6)
            side.get_errors += run.errors

    async def _stream(self, mode: str, server: ServerProcess) -> None:
        side = self.sides[mode]
        cpu = server.cpu_seconds()
        received = await consume(server.target, self.cfg.batch_size)
        side.spans += 1 + math.ceil(received.tasks / self.cfg.batch_size)  # a SELECT a batch
        await self._drained(mode)
        side.stream_cpu_s.append(server.cpu_seconds() - cpu)
        side.stream_rates.append(received.tasks / received.seconds)
        self.tasks_per_stream = received.tasks

    async def _drained(self, mode: str) -> None:
        """Wait until the traced server has exported what its calls so far made, so the
        export's CPU counts for the calls that caused it and not for the next figure."""
        if mode != "on":
            return
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.sink.spans < self.sides[mode].spans and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


@asynccontextmanager
async def today_server(cfg: PerfConfig, checkout: Path) -> AsyncIterator[ServerProcess]:
    """`python -m service` as checked out in `checkout` (say, main), on the same database."""
    port = free_port()
    args = ["-m", "service", "serve", "--database-url", cfg.url, "--log-level", "WARNING"]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, *args, "--shutdown-grace", "1", "--address", f"127.0.0.1:{port}"],
            cwd=checkout,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        server = ServerProcess(f"TaskService at {checkout}", process, port, stderr)
        try:
            await wait_healthy(server)
            yield server
        finally:
            await stop(server)


async def measure(
    cfg: PerfConfig,
    generator: LoadGenerator,
    targets: calls.Targets,
    rounds: int,
    today: Path | None = None,
) -> TracingCost:
    """Start the servers (today's code too, if given), then measure them in turns."""
    get = calls.get_task(targets, resources_pb2.TASK_VIEW_BASIC)
    async with span_sink() as (sink, endpoint), AsyncExitStack() as stack:
        bench = TracingBench(cfg, generator, sink, rounds)
        servers: dict[str, ServerProcess] = {}
        if today is not None:
            servers["today"] = await stack.enter_async_context(today_server(cfg, today))
        traced = ("--tracing", "on", "--tracing-endpoint", endpoint, "--tracing-sample-ratio", "1")
        off = service_server(cfg, "--tracing", "off", name="TaskService, tracing off")
        servers["off"] = await stack.enter_async_context(off)
        on = service_server(cfg, *traced, name="TaskService, tracing on")
        servers["on"] = await stack.enter_async_context(on)
        await bench.measure(servers, get)
        await stack.aclose()  # SIGTERM: the traced server flushes its last spans
        return TracingCost(rounds, bench.sides, sink.spans, bench.tasks_per_stream)


async def run(cfg: PerfConfig, rounds: int, today: Path | None = None) -> TracingCost:
    """Prepare the database (as the perf bench does), measure, drop it if asked."""
    tools = resolve_tools(cfg, say)
    try:
        say(f"Preparing database {cfg.database} ({cfg.tasks:,} tasks)")
        await prepare_database(cfg)
        targets = await calls.pick_targets(cfg, cfg.connections)
        with tempfile.TemporaryDirectory(prefix="bench-tracing-") as workdir:
            generator = LoadGenerator(tools, Path(workdir), cfg.concurrency, cfg.connections)
            return await measure(cfg, generator, targets, rounds, today)
    finally:
        if cfg.drop_after:
            await drop_database(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.perf.tracing`: the perf bench's options, plus --rounds."""
    from bench.perf.main import _parser, config_from  # the perf bench's own command line

    parser = _parser()
    parser.prog = "python -m bench.perf.tracing"
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (--smoke: 1)")
    parser.add_argument(
        "--today",
        type=Path,
        help="also measure the service as checked out here (e.g. main, without tracing)",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.smoke else 5)
    try:
        cfg = config_from(args)
    except ValueError as error:
        sys.stderr.write(f"{error}\n")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    say("\n" + asyncio.run(run(cfg, rounds, args.today)).report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
