"""Watcher client processes: N WatchTasks streams to one server each, from now.

    python -m bench.feed.watchers ADDRESS PROJECT_ID STREAMS SAMPLED OUTPUT

Opens STREAMS streams (at most 90 per HTTP/2 connection), prints `ready` once each has
its opening BOOKMARK, then reads until stdin closes. SAMPLED streams decode every
response and record commit-to-delivery latency (receive time minus the event's
commit_time, same host clock); the others only count responses and bytes, so the
client's own CPU stays out of the figures. Writes a JSON summary to OUTPUT.
start_watchers() starts such processes and stop() collects their summaries.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from bench.feed.clients import Clients, start_clients
from taskmanager.v1 import task_service_pb2 as pb

METHOD = "/taskmanager.v1.TaskService/WatchTasks"
STREAMS_PER_CONNECTION = 90


async def _watch(
    channel: grpc.aio.Channel,
    project_id: int,
    sampled: bool,
    stats: dict[str, Any],
    ready: asyncio.Event,
) -> None:
    call = channel.unary_stream(
        METHOD,
        request_serializer=pb.WatchTasksRequest.SerializeToString,
        response_deserializer=None,  # raw bytes
    )(pb.WatchTasksRequest(project_id=project_id))
    first = True
    async for raw in call:
        now = time.time()
        if first:
            first = False
            stats["ready"] += 1
            if stats["ready"] == stats["streams"]:
                ready.set()
            continue
        stats["responses"] += 1
        stats["bytes"] += len(raw)
        if sampled:
            response = pb.WatchTasksResponse.FromString(raw)
            for event in response.events:
                if event.type == pb.TASK_EVENT_TYPE_BOOKMARK:
                    continue
                stats["events"] += 1
                commit = event.commit_time.seconds + event.commit_time.nanos / 1e9
                stats["latencies_ms"].append((commit, (now - commit) * 1000))


async def main(address: str, project_id: int, streams: int, sampled: int, output: str) -> None:
    stats: dict[str, Any] = {
        "streams": streams,
        "ready": 0,
        "responses": 0,
        "bytes": 0,
        "events": 0,
        "sampled": sampled,
        "latencies_ms": [],
    }
    ready = asyncio.Event()
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-streams // STREAMS_PER_CONNECTION))
    ]
    tasks = [
        asyncio.create_task(
            _watch(channels[i // STREAMS_PER_CONNECTION], project_id, i < sampled, stats, ready)
        )
        for i in range(streams)
    ]
    await ready.wait()
    print("ready", flush=True)  # noqa: T201
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes stdin
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    with open(output, "w") as sink:
        json.dump(stats, sink)


class WatcherClients(Clients):
    """Running watcher client processes and their result files."""

    async def stop(self) -> list[dict[str, Any]]:
        """Close their stdin (they stop and write their results); the results."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.close()
        return await self.results(60)


async def start_watchers(
    address: str, project_id: int, streams: int, clients: int, sampled: int, workdir: Path
) -> WatcherClients:
    """`clients` processes sharing `streams` streams; returns once every stream is open."""
    counts = [streams // clients + (1 if i < streams % clients else 0) for i in range(clients)]
    arguments = [(address, project_id, count, min(sampled, count)) for count in counts]
    outputs = [workdir / f"watchers-{project_id}-{i}.json" for i in range(clients)]
    return await start_clients(WatcherClients, "bench.feed.watchers", arguments, outputs)


if __name__ == "__main__":
    address, project, streams, sampled, output = sys.argv[1:6]
    asyncio.run(main(address, int(project), int(streams), int(sampled), output))
