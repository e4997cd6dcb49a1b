"""The feed bench: WatchTasks commit-to-delivery latency on another process, CPU per event.

Writer processes send UpdateTask calls to server A at a fixed rate (open loop) on the
tasks of one project, for a warm-up and then the measured seconds; watchers of that
project on server B, in client processes of their own, receive the events. Figures of the
measured seconds only: the writes A completed, latency p50 and p99 (receive time minus
commit time), who used the CPU, B's feed reads, messages and CPU per event and message
(from its /metrics); then B's RSS growth with many idle watchers, and its LISTEN connections.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.core.cpu import Group, PidSeconds, postgres_cpu_seconds, processes, take, used
from bench.core.database import reset_writes
from bench.core.run import say
from bench.core.servers import ServerProcess, free_port, service_server
from bench.feed.config import FeedConfig
from bench.feed.metrics import scrape
from bench.feed.report import FeedResults
from bench.feed.watchers import start_watchers
from bench.feed.writers import DRAIN_TIMEOUT, start_writers

WATCHED_PROJECT, IDLE_PROJECT = 1, 2  # seeded projects are 1 .. projects
TAIL_SECONDS = 1.0  # after the window: its last events reach the watchers
START_DELAY = 0.5  # seconds between telling the writers and their first slot
KIB = 1024


async def measure(cfg: FeedConfig) -> FeedResults:
    """Both phases on two fresh servers; the database is put back as seeded after."""
    task_ids = await _task_ids(cfg.dsn, WATCHED_PROJECT)
    metrics_port = free_port()
    b_args = ("--metrics-port", str(metrics_port), *cfg.feed_args())
    try:
        with tempfile.TemporaryDirectory(prefix="bench-feed-") as directory:
            workdir = Path(directory)
            async with (
                service_server(cfg, name="server A (writes)") as a,
                service_server(cfg, *b_args, name="server B (watchers)") as b,
            ):
                say(f"{cfg.watchers} watchers on B, {cfg.rate:g} writes/s on A")
                live = await _deliveries(cfg, a, b, metrics_port, task_ids, workdir)
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
    cfg: FeedConfig,
    a: ServerProcess,
    b: ServerProcess,
    metrics_port: int,
    task_ids: list[int],
    workdir: Path,
) -> dict[str, Any]:
    """Writers on A after a warm-up, watchers on B: the live figures of FeedResults."""
    watchers = await start_watchers(
        b.target, WATCHED_PROJECT, cfg.watchers, cfg.clients, cfg.sampled, workdir
    )
    writers = await start_writers(
        a.target,
        cfg.rate,
        (cfg.warmup, cfg.duration),
        cfg.writer_concurrency,
        task_ids,
        cfg.writers,
        workdir,
    )
    foreign: set[int] = set()
    groups = {
        "server A": processes(a.pid),
        "server B": processes(b.pid),
        "PostgreSQL": _postgres(foreign),
        f"writer processes ({cfg.writers})": processes(*writers.pids),
        f"watcher client processes ({cfg.clients})": processes(
            *(p.pid for p in watchers.processes)
        ),
    }
    begin = time.time() + START_DELAY
    await writers.go(begin)
    started, ended = begin + cfg.warmup, begin + cfg.warmup + cfg.duration
    foreign |= await _other_backends(cfg)
    await _until(started)
    before, b_cpu, counters = take(groups), b.cpu_seconds(), await scrape(metrics_port)
    await _until(ended)
    foreign |= await _other_backends(cfg)
    usage = used(before, take(groups))
    written = await writers.results(DRAIN_TIMEOUT + 60)
    await _until(ended + TAIL_SECONDS)
    b_cpu, feed = b.cpu_seconds() - b_cpu, await scrape(metrics_port) - counters
    latencies = _window(await watchers.stop(), started, ended)
    write_ms = sorted(ms for writer in written for ms in writer["latencies_ms"])
    counts = {key: sum(w[key] for w in written) for key in ("offered", "sent", "skipped", "failed")}
    return {
        **counts,
        "completed": len(write_ms),
        "write_p50_ms": _quantile(write_ms, 0.50),
        "write_p99_ms": _quantile(write_ms, 0.99),
        "latency_p50_ms": _quantile(latencies, 0.50),
        "latency_p99_ms": _quantile(latencies, 0.99),
        "latency_samples": len(latencies),
        "server_cpu_seconds": b_cpu,
        "feed": feed,
        "cpu": usage,
    }


async def _until(moment: float) -> None:
    """Sleep until the Unix time `moment` (at once if it is past)."""
    await asyncio.sleep(max(0.0, moment - time.time()))


def _postgres(foreign: set[int]) -> Group:
    """PostgreSQL's processes less the client backends of other databases (other programs'
    work on a shared server), `foreign` as known when read."""

    def read() -> PidSeconds:
        return {pid: s for pid, s in postgres_cpu_seconds().items() if pid not in foreign}

    return read


async def _other_backends(cfg: FeedConfig) -> set[int]:
    """Client backends of PostgreSQL on other databases than the bench's."""
    connection = await asyncpg.connect(cfg.dsn)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND datname IS DISTINCT FROM $1",
            cfg.database,
        )
    finally:
        await connection.close()
    return {row["pid"] for row in rows}


async def _task_ids(dsn: str, project_id: int) -> list[int]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT id FROM tasks WHERE project_id = $1", project_id)
    finally:
        await connection.close()
    return [row["id"] for row in rows]


def _window(stats: list[dict[str, Any]], started: float, ended: float) -> list[float]:
    """Latencies of the events committed in the window, in order."""
    return sorted(
        ms
        for client in stats
        for commit, ms in client["latencies_ms"]
        if started <= commit <= ended
    )


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
