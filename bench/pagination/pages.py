"""ListTasks deep-page latency against page 1, and the same for an SQL OFFSET query.

Both use one query: all projects, no filter, newest first (`create_time desc`,
ties by id desc), `page_size` tasks a page. The keyset token of the deep page
is obtained by walking every page before it, as a client would.
"""

from __future__ import annotations

import asyncpg
import grpc

from bench.config import PaginationConfig
from bench.results import PagePair
from bench.sql import LIVE, TASK_COLUMNS
from bench.timing import paired_medians
from taskmanager.v1 import task_service_pb2 as pb
from taskmanager.v1 import task_service_pb2_grpc

OFFSET_SQL = (
    f"SELECT {TASK_COLUMNS} FROM tasks WHERE project_id IS NOT NULL AND {LIVE} "
    "ORDER BY create_time DESC, id DESC LIMIT {limit} OFFSET {offset}"
)


async def token_for_page(
    stub: task_service_pb2_grpc.TaskServiceStub, request: pb.ListTasksRequest, page: int
) -> str:
    """The page token that yields page `page` (1-based) of `request`."""
    token = ""
    for number in range(1, page):
        reply: pb.ListTasksResponse = await stub.ListTasks(_with_token(request, token))
        token = reply.next_page_token
        if not token:
            raise RuntimeError(f"the listing ended at page {number}, before page {page}")
    return token


def _with_token(request: pb.ListTasksRequest, token: str) -> pb.ListTasksRequest:
    paged = pb.ListTasksRequest()
    paged.CopyFrom(request)
    paged.page_token = token
    return paged


async def measure_list_pages(target: str, cfg: PaginationConfig) -> PagePair:
    """Median ListTasks latency of page 1 and of page `cfg.deep_page`."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        first = pb.ListTasksRequest(page_size=cfg.page_size)
        deep = _with_token(first, await token_for_page(stub, first, cfg.deep_page))
        first_ms, deep_ms = await paired_medians(
            lambda: stub.ListTasks(first), lambda: stub.ListTasks(deep), cfg.repeat
        )
        reply: pb.ListTasksResponse = await stub.ListTasks(deep)
    return PagePair(first_ms, deep_ms, tuple(task.id for task in reply.tasks))


async def measure_offset_pages(cfg: PaginationConfig) -> PagePair:
    """Median latency of the equivalent SQL at OFFSET 0 and at the deep page's offset."""
    first_sql = OFFSET_SQL.format(limit=cfg.page_size, offset=0)
    deep_sql = OFFSET_SQL.format(limit=cfg.page_size, offset=cfg.deep_offset)
    connection = await asyncpg.connect(cfg.dsn)
    try:
        first_ms, deep_ms = await paired_medians(
            lambda: connection.fetch(first_sql), lambda: connection.fetch(deep_sql), cfg.repeat
        )
        rows = await connection.fetch(deep_sql)
    finally:
        await connection.close()
    return PagePair(first_ms, deep_ms, tuple(row["id"] for row in rows))
