"""StreamTasks throughput and server memory, against a hand-written asyncpg keyset stream.

The client is this (bench) process; each server is a fresh process of its own,
so its VmHWM before the stream is its start-up peak and the growth is all the
stream's doing. CPU time of server and client shows which side is saturated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from time import perf_counter, process_time

import grpc

from bench.config import DatabaseConfig
from bench.results import StreamRun
from bench.servers import ServerProcess, baseline_server, service_server
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from taskmanager.v1 import task_service_pb2 as pb


@dataclass(frozen=True)
class Received:
    """What a client got from one stream."""

    tasks: int
    id_sum: int
    first_batch_digest: str
    seconds: float


def digest(tasks: Iterable[resources_pb2.Task]) -> str:
    """A fingerprint of a batch of Task messages (deterministic serialisation)."""
    return hashlib.sha256(
        b"".join(t.SerializeToString(deterministic=True) for t in tasks)
    ).hexdigest()


async def consume(target: str, batch_size: int) -> Received:
    """Read a whole unfiltered stream."""
    tasks = id_sum = 0
    first = ""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        started = perf_counter()
        response: pb.StreamTasksResponse
        async for response in stub.StreamTasks(pb.StreamTasksRequest(batch_size=batch_size)):
            first = first or digest(response.tasks)
            tasks += len(response.tasks)
            id_sum += sum(task.id for task in response.tasks)
        seconds = perf_counter() - started
    return Received(tasks, id_sum, first, seconds)


async def measure_stream(
    server_context: AbstractAsyncContextManager[ServerProcess], batch_size: int
) -> StreamRun:
    """Start the server, stream everything from it once, and stop it."""
    async with server_context as server:
        before, server_cpu, client_cpu = server.memory(), server.cpu_seconds(), process_time()
        received = await consume(server.target, batch_size)
        return StreamRun(
            tasks=received.tasks,
            id_sum=received.id_sum,
            first_batch_digest=received.first_batch_digest,
            seconds=received.seconds,
            before=before,
            after=server.memory(),
            server_cpu_seconds=server.cpu_seconds() - server_cpu,
            client_cpu_seconds=process_time() - client_cpu,
        )


async def alternate_streams(
    cfg: DatabaseConfig, runs: int, batch_size: int, progress: Callable[[str], None]
) -> tuple[tuple[StreamRun, ...], tuple[StreamRun, ...]]:
    """Full streams from TaskService and the asyncpg baseline, taking turns, each from a
    fresh process: (TaskService runs, baseline runs)."""
    streams, baselines = [], []
    for number in range(1, runs + 1):
        progress(f"Stream {number}/{runs}: asyncpg keyset baseline server")
        baselines.append(await measure_stream(baseline_server(cfg), batch_size))
        progress(f"Stream {number}/{runs}: TaskService")
        streams.append(await measure_stream(service_server(cfg), batch_size))
    return tuple(streams), tuple(baselines)
