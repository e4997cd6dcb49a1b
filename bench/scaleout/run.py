"""The scale-out bench: what PgBouncer and a read replica cost, each against its baseline.

    python -m bench.perf.scaleout [--smoke] [--seconds S] [--rounds N] [--tasks N]

In one run, with the real server as a separate process:
- GetTask and CreateTask direct to PostgreSQL, and through a transaction-pooling
  PgBouncer (database_pooler=transaction, the shipped deploy/pgbouncer/pgbouncer.ini);
  target: through PgBouncer >= 0.75x direct;
- GetTask and ListTasks on a primary alone, and with its streaming standby as read
  replica (token-less, and with a consistency token of a recent write).
Rounds alternate the two sides (A B A B ...) and the median counts. On a 2-core machine
the client, the server, PgBouncer and both PostgreSQL servers share the cores, so the
replica figures measure the routing's overhead, not added capacity. Every call is
counted by the server (its Prometheus counters); any call that is not OK fails the run
(exit status 1). Missed throughput targets are reported, not fatal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import grpc
from sqlalchemy.engine import make_url

from bench.perf.scaleout_load import Call, Throughput, measure
from service.settings import normalise_database_url
from service.storage import migrate
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2_grpc,
)
from taskmanager.v1 import task_service_pb2 as tasks_pb
from tests.infra.pgbouncer import start_pgbouncer
from tests.infra.postgres_cluster import StreamingPair, start_streaming_pair
from tests.infra.processes import free_port
from tests.infra.service_process import service_process

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POOLER_TARGET = 0.75
IN_FLIGHT = 64
# (full, smoke)
DEFAULTS = {"seconds": (10.0, 1.0), "rounds": (3, 1), "tasks": (5000, 500)}


@dataclass
class Comparison:
    """One call measured on a baseline and on a scaled-out configuration."""

    title: str
    baseline: list[Throughput] = field(default_factory=list)
    candidate: list[Throughput] = field(default_factory=list)

    @staticmethod
    def median(runs: list[Throughput]) -> float:
        return statistics.median(run.per_second for run in runs) if runs else 0.0

    @property
    def ratio(self) -> float:
        base = self.median(self.baseline)
        return self.median(self.candidate) / base if base else 0.0

    @property
    def failures(self) -> int:
        return sum(sum(run.failed.values()) for run in (*self.baseline, *self.candidate))


@dataclass(frozen=True)
class Side:
    """How one side of a comparison starts the server."""

    label: str
    flags: tuple[str, ...]


async def run_side(
    side: Side, calls: Sequence[tuple[Comparison, Call, bool]], seconds: float
) -> None:
    """Start the server as `side` says and measure each call on it once."""
    metrics_port = free_port()
    flags = (*side.flags, "--metrics-port", str(metrics_port))
    async with service_process(*flags) as server:
        for comparison, call, candidate in calls:
            # A short warm-up: pools filled, statements cached.
            await measure(server.address, metrics_port, call, seconds=0.3, in_flight=IN_FLIGHT)
            result = await measure(
                server.address, metrics_port, call, seconds=seconds, in_flight=IN_FLIGHT
            )
            (comparison.candidate if candidate else comparison.baseline).append(result)


async def seed(url: str, count: int) -> tuple[int, int]:
    """A project with `count` tasks, made through a server on `url`; (its id, a task's id)."""
    async with (
        service_process("--database-url", url) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        project = await project_service_pb2_grpc.ProjectServiceStub(channel).CreateProject(
            project_service_pb2.CreateProjectRequest(name=f"scaleout-{uuid.uuid4().hex[:8]}")
        )
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        last_id = 0
        for start in range(0, count, 500):
            response = await tasks.BatchCreateTasks(
                tasks_pb.BatchCreateTasksRequest(
                    requests=[
                        tasks_pb.CreateTaskRequest(
                            task=resources_pb2.Task(project_id=project.id, title=f"t{number}")
                        )
                        for number in range(start, min(start + 500, count))
                    ]
                )
            )
            last_id = response.tasks[-1].id
        return int(project.id), int(last_id)


@asynccontextmanager
async def scratch_database(admin_url: str) -> AsyncIterator[tuple[str, str]]:
    """(direct URL, name) of a new migrated database on the test PostgreSQL; dropped after."""
    url = make_url(normalise_database_url(admin_url))
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"taskservice_bench_scaleout_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = url.set(database=name).render_as_string(hide_password=False)
    try:
        await asyncio.to_thread(migrate.upgrade, database_url)
        yield database_url, name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def pooler_comparisons(args: argparse.Namespace) -> list[Comparison]:
    """GetTask and CreateTask direct against through PgBouncer."""
    async with scratch_database(args.database_url) as (direct_url, name):
        project_id, task_id = await seed(direct_url, args.tasks)
        server = make_url(direct_url)
        # As many server connections as one process's pool may open: a fair comparison.
        bouncer = start_pgbouncer(
            server_host=server.host or "127.0.0.1", server_port=server.port or 5432, pool_size=20
        )
        try:
            get = Comparison("GetTask: PgBouncer / direct")
            create = Comparison("CreateTask: PgBouncer / direct")
            calls = (
                (get, Call("GetTask", tasks_pb.GetTaskRequest(id=task_id))),
                (
                    create,
                    Call(
                        "CreateTask",
                        tasks_pb.CreateTaskRequest(
                            task=resources_pb2.Task(project_id=project_id, title="bench")
                        ),
                    ),
                ),
            )
            direct = Side("direct", ("--database-url", direct_url))
            pooled = Side(
                "pgbouncer",
                ("--database-url", bouncer.url(name), "--database-pooler", "transaction"),
            )
            for _ in range(args.rounds):
                for side, candidate in ((direct, False), (pooled, True)):
                    await run_side(side, [(c, call, candidate) for c, call in calls], args.seconds)
        finally:
            bouncer.remove()
    return [get, create]


async def replica_comparisons(args: argparse.Namespace) -> list[Comparison]:
    """Reads on a primary alone against the same primary with its standby as replica."""
    pair: StreamingPair = await asyncio.to_thread(start_streaming_pair)
    try:
        name = "taskservice"
        await asyncio.to_thread(pair.primary.query, f'CREATE DATABASE "{name}"')
        primary_url = pair.primary.url(name)
        await asyncio.to_thread(migrate.upgrade, primary_url)
        project_id, task_id = await seed(primary_url, args.tasks)
        await asyncio.to_thread(pair.wait_streaming)
        token = await asyncio.to_thread(pair.primary.query, "SELECT pg_current_wal_insert_lsn()")
        get = Comparison("GetTask: with standby / primary only")
        token_get = Comparison("GetTask + consistency token: with standby / primary only")
        listing = Comparison("ListTasks (50): with standby / primary only")
        get_call = Call("GetTask", tasks_pb.GetTaskRequest(id=task_id))
        token_call = Call(
            "GetTask",
            tasks_pb.GetTaskRequest(id=task_id),
            metadata=(("x-consistency-token", token),),
        )
        list_call = Call("ListTasks", tasks_pb.ListTasksRequest(project_id=project_id))
        primary = Side("primary only", ("--database-url", primary_url))
        replicated = Side(
            "with standby",
            (
                *("--database-url", primary_url),
                *("--read-database-urls", f'["{pair.standby.url(name)}"]'),
            ),
        )
        for _ in range(args.rounds):
            for side, candidate in ((primary, False), (replicated, True)):
                await run_side(
                    side,
                    [(get, get_call, candidate), (listing, list_call, candidate)],
                    args.seconds,
                )
            await run_side(replicated, [(token_get, token_call, True)], args.seconds)
        token_get.baseline = get.baseline
    finally:
        await asyncio.to_thread(pair.remove)
    return [get, token_get, listing]


def report(comparisons: Sequence[Comparison]) -> str:
    """The table: medians per side, the ratio, failures."""
    lines = [f"{'comparison':<58} {'baseline/s':>11} {'scaled/s':>10} {'ratio':>6} {'failed':>6}"]
    for c in comparisons:
        lines.append(
            f"{c.title:<58} {c.median(c.baseline):>11,.0f} {c.median(c.candidate):>10,.0f}"
            f" {c.ratio:>6.2f} {c.failures:>6}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    """Both comparisons, the report, and the exit status."""
    comparisons = [*await pooler_comparisons(args), *await replica_comparisons(args)]
    print(f"== Scale-out ({os.cpu_count()} CPUs, {IN_FLIGHT} calls in flight)")  # noqa: T201
    print(report(comparisons))  # noqa: T201
    for comparison in comparisons[:2]:
        verdict = "met" if comparison.ratio >= POOLER_TARGET else "MISSED"
        print(f"target {comparison.title} >= {POOLER_TARGET}: {verdict}")  # noqa: T201
    for comparison in comparisons:
        for run in (*comparison.baseline, *comparison.candidate):
            if run.failed:
                print(f"FAILED calls in {comparison.title}: {dict(run.failed)}")  # noqa: T201
    return 1 if any(comparison.failures for comparison in comparisons) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench.perf.scaleout` (and `python -m bench scaleout`)."""
    parser = argparse.ArgumentParser(prog="python -m bench scaleout", description=__doc__)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", DEFAULT_ADMIN_URL),
        help="administrative PostgreSQL URL for the PgBouncer comparison",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny and quick; checks, not figures")
    for name, (full, smoke) in DEFAULTS.items():
        parser.add_argument(f"--{name}", type=type(full), help=f"default {full} (--smoke: {smoke})")
    args = parser.parse_args(argv)
    for name, (full, smoke) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
