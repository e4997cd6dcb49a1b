"""StreamTasks throughput, server memory and CPU, against the hand-written asyncpg keyset stream."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from time import perf_counter, process_time

import grpc

from bench.core.config import DatabaseConfig
from bench.core.report import Row, Section, yes
from bench.core.servers import Memory, ServerProcess, baseline_server, service_server
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from taskmanager.v1 import task_service_pb2 as pb

KIB_PER_MIB = 1024
MIN_STREAM_RATIO = 0.8


@dataclass(frozen=True)
class StreamRun:
    """One full stream as a client received it, and the server's memory and CPU around it."""

    tasks: int
    id_sum: int
    first_batch_digest: str
    seconds: float
    before: Memory
    after: Memory
    server_cpu_seconds: float
    client_cpu_seconds: float

    @property
    def rate(self) -> float:
        """Tasks received per second."""
        return self.tasks / self.seconds

    @property
    def hwm_growth_mib(self) -> float:
        """Growth of the server's peak RSS (VmHWM) over the stream, MiB."""
        return (self.after.hwm_kib - self.before.hwm_kib) / KIB_PER_MIB

    def cpu(self) -> str:
        """Server CPU per task, and each side's CPU over wall time (1.0 = one core busy)."""
        per_task = self.server_cpu_seconds / self.tasks * 1e6
        server, client = self.server_cpu_seconds, self.client_cpu_seconds
        return (
            f"{per_task:.1f} µs/task; server {server / self.seconds:.0%}, "
            f"client {client / self.seconds:.0%} of a core"
        )


def digest(tasks: Iterable[resources_pb2.Task]) -> str:
    """A fingerprint of a batch of Task messages (deterministic serialisation)."""
    return hashlib.sha256(
        b"".join(t.SerializeToString(deterministic=True) for t in tasks)
    ).hexdigest()


async def measure_stream(
    server_context: AbstractAsyncContextManager[ServerProcess], batch_size: int
) -> StreamRun:
    """Start the server, read one whole unfiltered stream from it, and stop it."""
    async with server_context as server:
        return await read_stream(server, batch_size)


async def read_stream(server: ServerProcess, batch_size: int) -> StreamRun:
    """Read one whole unfiltered stream from a running server."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        before, server_cpu, client_cpu = server.memory(), server.cpu_seconds(), process_time()
        tasks = id_sum = 0
        first = ""
        started = perf_counter()
        response: pb.StreamTasksResponse
        async for response in stub.StreamTasks(pb.StreamTasksRequest(batch_size=batch_size)):
            first = first or digest(response.tasks)
            tasks += len(response.tasks)
            id_sum += sum(task.id for task in response.tasks)
        seconds = perf_counter() - started
        return StreamRun(
            tasks=tasks,
            id_sum=id_sum,
            first_batch_digest=first,
            seconds=seconds,
            before=before,
            after=server.memory(),
            server_cpu_seconds=server.cpu_seconds() - server_cpu,
            client_cpu_seconds=process_time() - client_cpu,
        )


@dataclass(frozen=True)
class Streams:
    """Full streams from TaskService and from the asyncpg baseline."""

    service: tuple[StreamRun, ...]
    baseline: tuple[StreamRun, ...]

    def section(self, tasks: int, batch_size: int, max_growth_mib: float) -> Section:
        """Throughput against the baseline, server memory, and the completeness checks. The
        fastest run counts for throughput (the least disturbed), the hungriest for memory."""
        stream = max(self.service, key=lambda run: run.rate)
        base = max(self.baseline, key=lambda run: run.rate)
        hungriest = max(self.service, key=lambda run: run.hwm_growth_mib)
        growth = hungriest.hwm_growth_mib
        runs = (*self.service, *self.baseline)
        complete = all(run.tasks == tasks for run in runs) and len({r.id_sum for r in runs}) == 1
        same = len({run.first_batch_digest for run in runs}) == 1
        ratio, least = stream.rate / base.rate, MIN_STREAM_RATIO
        title = (
            f"StreamTasks (batch_size {batch_size}, {tasks:,} tasks, client in the bench process, "
            f"best of {len(self.service)})"
        )
        return title, [
            Row("TaskService StreamTasks", _rates(self.service)),
            Row("asyncpg keyset stream (bench/)", _rates(self.baseline)),
            Row("StreamTasks / asyncpg", f"{ratio:.2f}", f">= {least}", ratio >= least),
            Row("TaskService server CPU", stream.cpu()),
            Row("asyncpg server CPU", base.cpu()),
            Row("server VmHWM before stream", _mib(hungriest.before.hwm_kib)),
            Row("server VmHWM after stream", _mib(hungriest.after.hwm_kib)),
            Row(
                "server peak RSS growth (worst run)",
                f"{growth:.1f} MiB",
                f"<= {max_growth_mib:.0f} MiB",
                growth <= max_growth_mib,
            ),
            Row("server VmRSS after stream", _mib(hungriest.after.rss_kib)),
            Row(
                "asyncpg server peak RSS growth",
                f"{max(run.hwm_growth_mib for run in self.baseline):.1f} MiB",
            ),
            Row("every task received, same ids as baseline", yes(complete), "yes", complete, True),
            Row("first batch's Task messages equal baseline's", yes(same), "yes", same, check=True),
        ]


def _rates(runs: tuple[StreamRun, ...]) -> str:
    best = max(runs, key=lambda run: run.rate)
    others = ", ".join(f"{run.rate:,.0f}" for run in runs)
    return f"{best.rate:,.0f} tasks/s ({best.seconds:.1f} s; runs {others})"


def _mib(kib: int) -> str:
    return f"{kib / KIB_PER_MIB:.1f} MiB"


async def alternate_streams(
    cfg: DatabaseConfig, runs: int, batch_size: int, progress: Callable[[str], None]
) -> Streams:
    """Full streams from TaskService and the asyncpg baseline, taking turns. Each server is a
    fresh process, so its VmHWM before the stream is its start-up peak."""
    service, baseline = [], []
    for number in range(1, runs + 1):
        progress(f"Stream {number}/{runs}: asyncpg keyset baseline server")
        baseline.append(await measure_stream(baseline_server(cfg), batch_size))
        progress(f"Stream {number}/{runs}: TaskService")
        service.append(await measure_stream(service_server(cfg), batch_size))
    return Streams(tuple(service), tuple(baseline))
