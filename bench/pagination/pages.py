"""ListTasks deep-page latency against page 1, and the same for an SQL OFFSET query."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import grpc

from bench.core.seed import LIVE, TASK_COLUMNS
from bench.core.timing import medians_ms
from bench.pagination.config import PaginationConfig
from taskmanager.v1 import task_service_pb2 as pb
from taskmanager.v1 import task_service_pb2_grpc

# All projects, no filter, newest first (ties by id): the query ListTasks answers.
OFFSET_SQL = (
    f"SELECT {TASK_COLUMNS} FROM tasks WHERE project_id IS NOT NULL AND {LIVE} "
    "ORDER BY create_time DESC, id DESC LIMIT {limit} OFFSET {offset}"
)


@dataclass(frozen=True)
class PagePair:
    """Median latency of the first and a deep page of the same query."""

    first_ms: float
    deep_ms: float
    deep_ids: tuple[int, ...]

    @property
    def ratio(self) -> float:
        """Deep page latency over first page latency."""
        return self.deep_ms / self.first_ms


async def measure_list_pages(target: str, cfg: PaginationConfig) -> PagePair:
    """Median ListTasks latency of page 1 and of page `cfg.deep_page`, whose token comes from
    walking every page before it, as a client would."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        first = pb.ListTasksRequest(page_size=cfg.page_size)
        deep = pb.ListTasksRequest(page_size=cfg.page_size)
        for number in range(1, cfg.deep_page):
            reply: pb.ListTasksResponse = await stub.ListTasks(deep)
            deep.page_token = reply.next_page_token
            if not deep.page_token:
                raise RuntimeError(f"the listing ended at page {number}, before {cfg.deep_page}")
        first_ms, deep_ms = await medians_ms(
            lambda: stub.ListTasks(first), lambda: stub.ListTasks(deep), repeat=cfg.repeat
        )
        reply = await stub.ListTasks(deep)
    return PagePair(first_ms, deep_ms, tuple(task.id for task in reply.tasks))


async def measure_offset_pages(cfg: PaginationConfig) -> PagePair:
    """Median latency of the equivalent SQL at OFFSET 0 and at the deep page's offset."""
    first_sql = OFFSET_SQL.format(limit=cfg.page_size, offset=0)
    deep_sql = OFFSET_SQL.format(limit=cfg.page_size, offset=cfg.deep_offset)
    connection = await asyncpg.connect(cfg.dsn)
    try:
        first_ms, deep_ms = await medians_ms(
            lambda: connection.fetch(first_sql),
            lambda: connection.fetch(deep_sql),
            repeat=cfg.repeat,
        )
        rows = await connection.fetch(deep_sql)
    finally:
        await connection.close()
    return PagePair(first_ms, deep_ms, tuple(row["id"] for row in rows))
