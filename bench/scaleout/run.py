"""The scale-out bench: GetTask and CreateTask through PgBouncer against direct, reads with a
streaming standby as read replica against the primary alone.

Each comparison runs the real server as a separate process, in rounds that alternate the
two sides (A B A B ...); the median counts. On a 2-core machine the client, the server,
PgBouncer and both PostgreSQL servers share the cores, so the replica figures measure the
routing's overhead, not added capacity. Every call is counted by the server (its Prometheus
counters); a call that is not OK fails the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy.engine import make_url

from bench.core.database import prepare_database, reset_writes
from bench.core.run import say
from bench.core.servers import free_port, service_server
from bench.scaleout.config import ScaleoutConfig
from bench.scaleout.load import Call, measure_calls
from bench.scaleout.report import Comparison, ScaleoutResults
from taskmanager.v1 import resources_pb2
from taskmanager.v1 import task_service_pb2 as pb
from tests.infra.pgbouncer import start_pgbouncer
from tests.infra.postgres_cluster import start_streaming_pair

POOLER_TARGET = 0.75
PROJECT_ID = 1  # seeded projects are 1 .. projects
WARMUP_SECONDS = 0.3  # pools filled, statements cached
# Measured: (comparison, call, whether it is the comparison's scaled-out side).
Measured = Sequence[tuple[Comparison, Call, bool]]


async def run_side(
    cfg: ScaleoutConfig, name: str, flags: Sequence[str], measured: Measured, url: str
) -> None:
    """Start the server on `url` with `flags` and measure each call on it once."""
    metrics_port = free_port()
    extra = (*flags, "--metrics-port", str(metrics_port))
    async with service_server(cfg, *extra, name=name, database_url=url) as server:
        say(f"{name}: {', '.join(call.method for _, call, _ in measured)}")
        for comparison, call, scaled in measured:
            await measure_calls(server.target, metrics_port, call, WARMUP_SECONDS, cfg.in_flight)
            result = await measure_calls(
                server.target, metrics_port, call, cfg.seconds, cfg.in_flight
            )
            (comparison.scaled if scaled else comparison.baseline).append(result)


async def pooler_comparisons(cfg: ScaleoutConfig) -> list[Comparison]:
    """GetTask and CreateTask direct against through PgBouncer (transaction mode)."""
    get = Comparison("GetTask: PgBouncer / direct", POOLER_TARGET)
    create = Comparison("CreateTask: PgBouncer / direct", POOLER_TARGET)
    new_task = resources_pb2.Task(project_id=PROJECT_ID, title="bench")
    calls = (
        (get, Call("GetTask", pb.GetTaskRequest(id=cfg.tasks // 2))),
        (create, Call("CreateTask", pb.CreateTaskRequest(task=new_task))),
    )
    server = make_url(cfg.url)
    # As many server connections as one process's pool may open: a fair comparison.
    bouncer = await asyncio.to_thread(
        start_pgbouncer,
        server_host=server.host or "127.0.0.1",
        server_port=server.port or 5432,
        pool_size=20,
    )
    try:
        pooled = ("--database-pooler", "transaction")
        for _ in range(cfg.rounds):
            await run_side(cfg, "direct", (), [(c, call, False) for c, call in calls], cfg.url)
            measured = [(c, call, True) for c, call in calls]
            await run_side(cfg, "through PgBouncer", pooled, measured, bouncer.url(cfg.database))
    finally:
        await asyncio.to_thread(bouncer.remove)
        await reset_writes(cfg)
    return [get, create]


async def replica_comparisons(cfg: ScaleoutConfig) -> list[Comparison]:
    """Reads on a primary alone against the same primary with its streaming standby as read
    replica, token-less and with a consistency token of a recent write."""
    pair = await asyncio.to_thread(start_streaming_pair)
    try:
        primary = replace(cfg, admin_url=pair.primary.url("postgres"), keep=False)
        say(f"Seeding the primary of a new streaming pair ({cfg.tasks:,} tasks)")
        await prepare_database(primary)
        await asyncio.to_thread(pair.wait_streaming)
        token = await asyncio.to_thread(pair.primary.query, "SELECT pg_current_wal_insert_lsn()")
        get = Comparison("GetTask: with standby / primary only")
        token_get = Comparison("GetTask + consistency token: with standby / primary only")
        listing = Comparison("ListTasks (50): with standby / primary only")
        get_call = Call("GetTask", pb.GetTaskRequest(id=cfg.tasks // 2))
        token_call = Call("GetTask", get_call.request, (("x-consistency-token", token),))
        list_call = Call("ListTasks", pb.ListTasksRequest(project_id=PROJECT_ID))
        standby = ("--read-database-urls", f'["{pair.standby.url(cfg.database)}"]')
        for _ in range(cfg.rounds):
            reads = ((get, get_call), (listing, list_call))
            await run_side(cfg, "primary only", (), [(c, k, False) for c, k in reads], primary.url)
            measured = [*((c, k, True) for c, k in reads), (token_get, token_call, True)]
            await run_side(cfg, "with standby", standby, measured, primary.url)
        token_get.baseline = get.baseline
    finally:
        await asyncio.to_thread(pair.remove)
    return [get, token_get, listing]


async def measure(cfg: ScaleoutConfig) -> ScaleoutResults:
    """Both comparisons: the pooler on the seeded database, the replica on a pair of its own."""
    return ScaleoutResults((*await pooler_comparisons(cfg), *await replica_comparisons(cfg)))
