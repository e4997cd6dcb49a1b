"""Hand-written gRPC TaskServices the benches compare with: asyncpg rows, or one constant Task."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.core.seed import LIVE, TASK_COLUMNS
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from taskmanager.v1 import task_service_pb2 as pb

FIRST_BATCH = f"SELECT {TASK_COLUMNS} FROM tasks WHERE {LIVE} ORDER BY create_time, id LIMIT $1"
NEXT_BATCH = (
    f"SELECT {TASK_COLUMNS} FROM tasks WHERE {LIVE} AND (create_time, id) > ($1, $2) "
    "ORDER BY create_time, id LIMIT $3"
)
STATUS = {name.removeprefix("TASK_STATUS_"): n for name, n in resources_pb2.TaskStatus.items()}
GET_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"
DEFAULT_BATCH = 500
DEFAULT_POOL_SIZE = 10
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Shaped like a seeded row in the BASIC view.
CONSTANT_TASK = resources_pb2.Task(
    id=4242,
    project_id=42,
    title="Fix login flow #4242",
    description="Benchmark task 4242 of project 42.",
    status=resources_pb2.TASK_STATUS_IN_PROGRESS,
    priority=resources_pb2.TASK_PRIORITY_MEDIUM,
    tags=["backend", "perf"],
    assignee_id=17,
    etag='"1"',
)
CONSTANT_TASK.create_time.FromSeconds(1_735_689_600)
CONSTANT_TASK.update_time.FromSeconds(1_735_776_000)


def _set_time(value: datetime, target: Any) -> None:
    delta = value - EPOCH
    target.seconds = delta.days * 86_400 + delta.seconds
    target.nanos = delta.microseconds * 1_000


def task_message(row: asyncpg.Record) -> resources_pb2.Task:
    """The BASIC-view Task message of one row."""
    task = resources_pb2.Task(
        id=row[0],
        project_id=row[1],
        title=row[2],
        description=row[3],
        status=STATUS[row[4]],
        priority=row[5],
        tags=json.loads(row[6]),
        assignee_id=row[7],
        parent_task_id=row[8],
        etag=f'"{row[11]}"',
    )
    _set_time(row[9], task.create_time)
    _set_time(row[10], task.update_time)
    if row[12] is not None:
        _set_time(row[12], task.delete_time)
    return task


def _is_unfiltered(request: pb.StreamTasksRequest) -> bool:
    probe = pb.StreamTasksRequest()
    probe.CopyFrom(request)
    probe.ClearField("batch_size")
    return probe.ByteSize() == 0


class AsyncpgTaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    """StreamTasks (unfiltered, keyset batches) and GetTask (one fetchrow) straight from asyncpg
    rows: the service's BASIC-view messages without ORM, session, token encryption or checks."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> resources_pb2.Task:
        row = await self.pool.fetchrow(GET_TASK, request.id)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.id} not found")
        return task_message(row)

    async def StreamTasks(
        self, request: pb.StreamTasksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamTasksResponse]:
        if not _is_unfiltered(request):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "only batch_size is supported")
        size = request.batch_size or DEFAULT_BATCH
        after: tuple[datetime, int] | None = None
        while True:
            rows = await self._batch(after, size + 1)
            batch = rows[:size]
            if not batch:
                return
            last = batch[-1]
            after = (last[9], last[0])
            yield pb.StreamTasksResponse(
                tasks=[task_message(row) for row in batch],
                resume_token=f"{last[9].isoformat()}/{last[0]}",
            )
            if len(rows) <= size:
                return

    async def _batch(self, after: tuple[datetime, int] | None, limit: int) -> list[asyncpg.Record]:
        async with self.pool.acquire() as connection:
            if after is None:
                return list(await connection.fetch(FIRST_BATCH, limit))
            return list(await connection.fetch(NEXT_BATCH, *after, limit))


class ConstantTaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    """The transport ceiling: every GetTask answers CONSTANT_TASK, no database, no checks."""

    # gRPC fixes the signature; the answer ignores the request.
    async def GetTask(
        self,
        request: pb.GetTaskRequest,  # noqa: ARG002
        context: grpc.aio.ServicerContext[Any, Any],  # noqa: ARG002
    ) -> resources_pb2.Task:
        return CONSTANT_TASK


async def serve(address: str, servicer: task_service_pb2_grpc.TaskServiceServicer) -> None:
    """Serve `servicer` and the health check (the bench's readiness probe) until a signal.

    Methods a servicer does not define answer UNIMPLEMENTED."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


async def _serve(args: argparse.Namespace) -> None:
    if args.constant:
        await serve(args.address, ConstantTaskServicer())  # type: ignore[abstract]
        return
    pool = await asyncpg.create_pool(args.dsn, min_size=1, max_size=args.pool_size)
    try:
        await serve(args.address, AsyncpgTaskServicer(pool))  # type: ignore[abstract]
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m bench.core.baseline_server`."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--address", required=True, help="host:port to listen on")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dsn", help="asyncpg DSN of the seeded database")
    source.add_argument("--constant", action="store_true", help="GetTask only, no database")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE, help="connections")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_serve(args))
    else:
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
