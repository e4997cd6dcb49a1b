"""Writer client processes: UpdateTask on server A at a fixed rate, open loop.

    python -m bench.feed.writers ADDRESS RATE WARMUP DURATION CONCURRENCY TASK_IDS OUTPUT

Connects, prints `ready`, then reads a start time (Unix seconds) from stdin. From then it
sends RATE UpdateTask calls a second on the tasks listed (comma-separated) in the file
TASK_IDS: WARMUP seconds not counted, then DURATION seconds measured, and then stops. Each
call has its slot on a fixed schedule whatever the calls before it did (open loop); a
slot that finds CONCURRENCY calls in flight is skipped and counted, so a server that
cannot keep up shows as fewer writes, never as a longer window. Writes a JSON summary of
the measured seconds to OUTPUT. start_writers() starts such processes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from bench.feed.clients import Clients, start_clients
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from taskmanager.v1 import task_service_pb2 as pb

DRAIN_TIMEOUT = 30.0  # seconds the calls in flight at the end may take


async def _write(
    address: str, rate: float, warmup: float, duration: float, concurrency: int, ids: list[int]
) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "offered": 0,
        "sent": 0,
        "skipped": 0,
        "completed": 0,  # answered OK within the measured seconds
        "failed": 0,
        "latencies_ms": [],
    }
    async with grpc.aio.insecure_channel(address) as channel:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        await channel.channel_ready()
        print("ready", flush=True)  # noqa: T201
        loop = asyncio.get_running_loop()
        start = float(await loop.run_in_executor(None, sys.stdin.readline))
        measured_from, measured_to = start + warmup, start + warmup + duration
        in_flight: set[asyncio.Task[None]] = set()

        async def one(index: int, counted: bool) -> None:
            request = pb.UpdateTaskRequest(
                task=resources_pb2.Task(id=ids[index % len(ids)], title=f"w{index}"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            )
            sent = time.time()
            try:
                await tasks.UpdateTask(request)
            except grpc.aio.AioRpcError:
                stats["failed"] += counted
                return
            done = time.time()
            if counted and done <= measured_to:
                stats["completed"] += 1
                stats["latencies_ms"].append((done - sent) * 1000)

        index = 0
        while (slot := start + index / rate) < measured_to:
            delay = slot - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            counted = slot >= measured_from
            stats["offered"] += counted
            if len(in_flight) >= concurrency:
                stats["skipped"] += counted
            else:
                stats["sent"] += counted
                task = asyncio.create_task(one(index, counted))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            index += 1
        if in_flight:
            await asyncio.wait(in_flight, timeout=DRAIN_TIMEOUT)
    return stats


class WriterClients(Clients):
    """Running writer processes and their result files."""

    async def go(self, start: float) -> None:
        """Tell every writer when its schedule starts (Unix seconds)."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(f"{start!r}\n".encode())
            await process.stdin.drain()


async def start_writers(
    address: str,
    rate: float,
    phases: tuple[float, float],
    concurrency: int,
    task_ids: list[int],
    writers: int,
    workdir: Path,
) -> WriterClients:
    """`writers` processes sharing the rate, the concurrency and the tasks (each its own
    tasks: no two writers wait for one row lock); returns once each is connected."""
    share = max(1, concurrency // writers)
    arguments, outputs = [], []
    for index in range(writers):
        ids = workdir / f"writer-{index}.ids"
        ids.write_text(",".join(map(str, task_ids[index::writers])))
        arguments.append((address, rate / writers, *phases, share, ids))
        outputs.append(workdir / f"writer-{index}.json")
    return await start_clients(WriterClients, "bench.feed.writers", arguments, outputs)


def main(argv: list[str]) -> None:
    address, rate, warmup, duration, concurrency, ids_file, output = argv
    ids = [int(value) for value in Path(ids_file).read_text().split(",")]
    stats = asyncio.run(
        _write(address, float(rate), float(warmup), float(duration), int(concurrency), ids)
    )
    Path(output).write_text(json.dumps(stats))


if __name__ == "__main__":
    main(sys.argv[1:])
