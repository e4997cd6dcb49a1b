"""One feed bench run: servers A (writes) and B (watchers) on a database of its own.

Figures: commit-to-delivery latency on another process (p50, p99) at `rate` writes/s
with `watchers` watchers; server B's CPU per delivered event; B's RSS growth with
`idle_watchers` idle watchers, and how many LISTEN connections B holds.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from bench.feed.config import FeedBenchConfig
from bench.feed.processes import server, start_watchers
from service.storage.migrate import upgrade
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

pb = task_service_pb2


@dataclass(frozen=True)
class FeedBenchResults:
    """What one run measured."""

    achieved_rate: float  # writes/s actually committed in the measured window
    latency_p50_ms: float
    latency_p99_ms: float
    latency_samples: int
    delivered_events: int  # events delivered to all watchers in the window
    server_cpu_seconds: float  # process B, during the window and its tail
    idle_rss_growth_mib: float
    idle_rss_mib: float
    listeners: int  # LISTEN connections of B with idle watchers open

    @property
    def cpu_us_per_event(self) -> float:
        return self.server_cpu_seconds / max(self.delivered_events, 1) * 1e6


async def run(cfg: FeedBenchConfig) -> FeedBenchResults:
    """Create a database, run both phases, drop the database."""
    name = f"taskservice_feed_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(cfg.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = cfg.admin_dsn.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    try:
        await asyncio.to_thread(upgrade, url)
        with tempfile.TemporaryDirectory(prefix="bench-feed-") as workdir:
            return await _run(cfg, url, Path(workdir), f"{base}/{name}", name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _run(
    cfg: FeedBenchConfig, url: str, workdir: Path, dsn: str, name: str
) -> FeedBenchResults:
    async with (
        server(url, workdir / "a.log") as a,
        server(url, workdir / "b.log") as b,
        grpc.aio.insecure_channel(a.address) as channel,
    ):
        watched, idle, task_ids = await _seed(channel, cfg.tasks)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        clients = await start_watchers(
            b.address, watched, cfg.watchers, cfg.clients, cfg.sampled, workdir
        )
        await _write(tasks, task_ids, cfg.rate, cfg.warmup, cfg.writer_concurrency)
        cpu_before, started = b.cpu_seconds(), time.time()
        written = await _write(tasks, task_ids, cfg.rate, cfg.duration, cfg.writer_concurrency)
        ended = time.time()
        await asyncio.sleep(1.0)  # the tail of the window reaches the watchers
        cpu = b.cpu_seconds() - cpu_before
        stats = await clients.stop()
        latencies, per_watcher = _window(stats, started, ended)

        rss_before = b.rss_bytes()
        idle_clients = await start_watchers(
            b.address, idle, cfg.idle_watchers, cfg.clients, 0, workdir
        )
        await asyncio.sleep(1.0)
        rss_after = b.rss_bytes()
        listeners = await _listeners(dsn, name, b.process.pid)
        await idle_clients.stop()
    ordered = sorted(latencies)
    return FeedBenchResults(
        achieved_rate=written / (ended - started),
        latency_p50_ms=_quantile(ordered, 0.50),
        latency_p99_ms=_quantile(ordered, 0.99),
        latency_samples=len(ordered),
        delivered_events=round(per_watcher * cfg.watchers),
        server_cpu_seconds=cpu,
        idle_rss_growth_mib=(rss_after - rss_before) / 2**20,
        idle_rss_mib=rss_after / 2**20,
        listeners=listeners,
    )


async def _seed(channel: grpc.aio.Channel, count: int) -> tuple[int, int, list[int]]:
    """A watched project with `count` tasks, and an idle project nobody writes to."""
    projects = project_service_pb2_grpc.ProjectServiceStub(channel)
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    ids = []
    for label in ("watched", "idle"):
        request = project_service_pb2.CreateProjectRequest(name=f"{label}-{uuid.uuid4().hex[:6]}")
        ids.append((await projects.CreateProject(request)).id)
    task_ids: list[int] = []
    while len(task_ids) < count:
        size = min(1000, count - len(task_ids))
        batch = await tasks.BatchCreateTasks(
            pb.BatchCreateTasksRequest(
                requests=[
                    pb.CreateTaskRequest(task=resources_pb2.Task(project_id=ids[0], title="t"))
                    for _ in range(size)
                ]
            )
        )
        task_ids.extend(task.id for task in batch.tasks)
    return ids[0], ids[1], task_ids


async def _write(
    tasks: Any, task_ids: list[int], rate: float, seconds: float, concurrency: int
) -> int:
    """UpdateTask at `rate` per second for `seconds` (open loop: each write has its slot)."""
    slots = asyncio.Semaphore(concurrency)
    start = time.monotonic()
    total = int(rate * seconds)
    done = 0

    async def one(index: int) -> None:
        nonlocal done
        async with slots:
            request = pb.UpdateTaskRequest(
                task=resources_pb2.Task(id=task_ids[index % len(task_ids)], title=f"w{index}"),
                update_mask={"paths": ["title"]},
            )
            await tasks.UpdateTask(request)
            done += 1

    pending = []
    for index in range(total):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one(index)))
    await asyncio.gather(*pending)
    return done


def _window(stats: list[dict[str, Any]], started: float, ended: float) -> tuple[list[float], float]:
    """Latencies of events committed in the window, and events per watcher in it."""
    latencies: list[float] = []
    counts: list[int] = []
    for client in stats:
        samples = client["latencies_ms"]
        latencies.extend(ms for commit, ms in samples if started <= commit <= ended)
        if client["sampled"]:
            in_window = sum(1 for commit, _ in samples if started <= commit <= ended)
            counts.append(in_window // client["sampled"])
    return latencies, statistics.mean(counts) if counts else 0.0


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _listeners(dsn: str, database: str, pid: int) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            database,
            f"taskservice-feed-listener pid={pid}",
        )
    finally:
        await connection.close()
    return count
