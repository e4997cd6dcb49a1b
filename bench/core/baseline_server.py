"""Hand-written asyncpg TaskService: the baselines StreamTasks and GetTask are compared with.

StreamTasks (the pagination and perf benches' stream baseline) serves the
unfiltered request only (live tasks, order create_time, then id; `batch_size`
honoured), reading each batch with one keyset query on a pooled connection.
GetTask (the perf bench's hand-tuned ceiling) is one `fetchrow` by id on the
pool, whatever the view. Both build the same protobuf Task messages as the
service's BASIC view (etag included) by hand: no ORM, no session, no token
encryption, no validation. Every other method answers UNIMPLEMENTED. Also
serves the gRPC health check so the bench can wait for readiness.

    python -m bench.asyncpg_stream_server --address 127.0.0.1:50099 --dsn postgresql://...
        [--loop uvloop] [--pool-size 10]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc

from bench.grpc_server import add_server_options, run, serve_until_signal
from bench.sql import LIVE, TASK_COLUMNS
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from taskmanager.v1 import task_service_pb2 as pb

FIRST_BATCH = f"SELECT {TASK_COLUMNS} FROM tasks WHERE {LIVE} ORDER BY create_time, id LIMIT $1"
NEXT_BATCH = (
    f"SELECT {TASK_COLUMNS} FROM tasks WHERE {LIVE} AND (create_time, id) > ($1, $2) "
    "ORDER BY create_time, id LIMIT $3"
)
STATUS = {
    "PENDING": resources_pb2.TASK_STATUS_PENDING,
    "IN_PROGRESS": resources_pb2.TASK_STATUS_IN_PROGRESS,
    "BLOCKED": resources_pb2.TASK_STATUS_BLOCKED,
    "DONE": resources_pb2.TASK_STATUS_DONE,
    "CANCELLED": resources_pb2.TASK_STATUS_CANCELLED,
}
GET_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"
DEFAULT_BATCH = 500
DEFAULT_POOL_SIZE = 10
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    """StreamTasks and GetTask only, straight from asyncpg rows."""

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


async def serve(address: str, dsn: str, pool_size: int = DEFAULT_POOL_SIZE) -> None:
    """Serve until SIGTERM or SIGINT."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size)
    # Only StreamTasks and GetTask are implemented; the others answer UNIMPLEMENTED.
    servicer = AsyncpgTaskServicer(pool)  # type: ignore[abstract]
    try:
        await serve_until_signal(
            address,
            lambda server: task_service_pb2_grpc.add_TaskServiceServicer_to_server(
                servicer, server
            ),
        )
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m bench.asyncpg_stream_server`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_server_options(parser)
    parser.add_argument("--dsn", required=True, help="asyncpg DSN of the seeded database")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE, help="connections")
    args = parser.parse_args(argv)
    run(lambda: serve(args.address, args.dsn, args.pool_size), args.loop)


if __name__ == "__main__":
    main()
