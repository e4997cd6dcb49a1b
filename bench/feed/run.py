"""The feed bench: WatchTasks commit-to-delivery latency on another process, CPU per event.

Server A takes UpdateTask calls at a fixed rate (open loop) on the tasks of one project;
watchers of that project on server B, in client processes of their own, receive the
events. Figures: latency p50 and p99 (receive time minus commit time), B's CPU per
delivered event; then B's RSS growth with many idle watchers, and its LISTEN connections.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import field_mask_pb2

from bench.core.database import reset_writes
from bench.core.run import say
from bench.core.servers import ServerProcess, service_server
from bench.feed.config import FeedConfig
from bench.feed.report import FeedResults
from bench.feed.watchers import start_watchers
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from taskmanager.v1 import task_service_pb2 as pb

WATCHED_PROJECT, IDLE_PROJECT = 1, 2  # seeded projects are 1 .. projects
TAIL_SECONDS = 1.0  # after the last write: the window's last events reach the watchers
KIB = 1024


async def measure(cfg: FeedConfig) -> FeedResults:
    """Both phases on two fresh servers; the database is put back as seeded after."""
    task_ids = await _task_ids(cfg.dsn, WATCHED_PROJECT)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-feed-") as directory:
            workdir = Path(directory)
            async with (
                service_server(cfg, name="server A (writes)") as a,
                service_server(cfg, name="server B (watchers)") as b,
            ):
                say(f"{cfg.watchers} watchers on B, {cfg.rate:g} writes/s on A")
                live = await _deliveries(cfg, a, b, task_ids, workdir)
                say(f"{cfg.idle_watchers:,} idle watchers on B")
                rss_before = b.memory().rss_kib
                idle = await start_watchers(
                    b.target, IDLE_PROJECT, cfg.idle_watchers, cfg.clients, 0, workdir
                )
                await asyncio.sleep(1.0)
                rss_after = b.memory().rss_kib
                listeners = await _listeners(cfg, b.pid)
                await idle.stop()
    finally:
        await reset_writes(cfg)
    return FeedResults(
        **live,
        idle_rss_growth_mib=(rss_after - rss_before) / KIB,
        idle_rss_mib=rss_after / KIB,
        listeners=listeners,
    )


async def _deliveries(
    cfg: FeedConfig, a: ServerProcess, b: ServerProcess, task_ids: list[int], workdir: Path
) -> dict[str, Any]:
    """Writes on A after a warm-up, watchers on B: the live figures of FeedResults."""
    clients = await start_watchers(
        b.target, WATCHED_PROJECT, cfg.watchers, cfg.clients, cfg.sampled, workdir
    )
    async with grpc.aio.insecure_channel(a.target) as channel:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        await _write(tasks, task_ids, cfg.rate, cfg.warmup, cfg.writer_concurrency)
        cpu_before, started = b.cpu_seconds(), time.time()
        written = await _write(tasks, task_ids, cfg.rate, cfg.duration, cfg.writer_concurrency)
        ended = time.time()
    await asyncio.sleep(TAIL_SECONDS)
    cpu = b.cpu_seconds() - cpu_before
    latencies, per_watcher = _window(await clients.stop(), started, ended)
    ordered = sorted(latencies)
    return {
        "achieved_rate": written / (ended - started),
        "latency_p50_ms": _quantile(ordered, 0.50),
        "latency_p99_ms": _quantile(ordered, 0.99),
        "latency_samples": len(ordered),
        "delivered_events": round(per_watcher * cfg.watchers),
        "server_cpu_seconds": cpu,
    }


async def _task_ids(dsn: str, project_id: int) -> list[int]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT id FROM tasks WHERE project_id = $1", project_id)
    finally:
        await connection.close()
    return [row["id"] for row in rows]


async def _write(
    tasks: task_service_pb2_grpc.TaskServiceStub,
    task_ids: list[int],
    rate: float,
    seconds: float,
    concurrency: int,
) -> int:
    """UpdateTask at `rate` per second for `seconds` (open loop: each write has its slot)."""
    slots = asyncio.Semaphore(concurrency)
    start = time.monotonic()
    done = 0

    async def one(index: int) -> None:
        nonlocal done
        async with slots:
            request = pb.UpdateTaskRequest(
                task=resources_pb2.Task(id=task_ids[index % len(task_ids)], title=f"w{index}"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            )
            await tasks.UpdateTask(request)
            done += 1

    pending = []
    for index in range(int(rate * seconds)):
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


async def _listeners(cfg: FeedConfig, pid: int) -> int:
    """LISTEN connections a server process holds, by the application name it gives them."""
    connection = await asyncpg.connect(cfg.dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            cfg.database,
            f"taskservice-feed-listener pid={pid}",
        )
    finally:
        await connection.close()
    return count
