"""ListTasks with the `tags` and `title_contains` filters, and EXPLAIN of the same SQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import grpc

from bench.core.seed import LIVE, RARE_TAG, RARE_WORD, TASK_COLUMNS
from bench.core.timing import medians_ms
from bench.pagination.config import PaginationConfig
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from taskmanager.v1 import task_service_pb2 as pb

ORDER_LIMIT = "ORDER BY create_time DESC, id DESC LIMIT"
TITLE_WORD = RARE_WORD.lower()  # ILIKE: the lower-case needle must find the capitalised word


@dataclass(frozen=True)
class Search:
    """One search filter: the request, how to check a hit, its SQL and its index."""

    label: str
    request: pb.ListTasksRequest
    matches: Callable[[resources_pb2.Task], bool]
    literal_sql: str
    generic_types: str
    generic_where: str
    generic_value: str
    index: str


@dataclass(frozen=True)
class SearchRun:
    """ListTasks page 1 with one search filter, and the plans of the equivalent SQL: with the
    values inlined (a custom plan), and the parameterised statement's forced generic plan
    (what a cached prepared statement may switch to after five executions)."""

    label: str
    median_ms: float
    rows: int
    all_match: bool
    index: str
    plan: tuple[str, ...]
    generic_plan: tuple[str, ...]

    @property
    def index_used(self) -> bool:
        """Whether EXPLAIN ANALYZE (literal values) names the index."""
        return any(self.index in line for line in self.plan)

    @property
    def generic_index_used(self) -> bool:
        """Whether the generic plan of the parameterised statement names the index."""
        return any(self.index in line for line in self.generic_plan)


def searches(page_size: int) -> tuple[Search, ...]:
    """The two searches of the benchmark."""
    limit = page_size + 1  # the service reads one extra row to know whether more follow
    return (
        Search(
            label=f'tags=["{RARE_TAG}"]',
            request=pb.ListTasksRequest(page_size=page_size, tags=[RARE_TAG]),
            matches=lambda task: RARE_TAG in task.tags,
            literal_sql=f"SELECT {TASK_COLUMNS} FROM tasks WHERE {LIVE} "
            f"AND tags @> '[\"{RARE_TAG}\"]'::jsonb "
            f"{ORDER_LIMIT} {limit}",
            generic_types="jsonb, integer",
            generic_where="tags @> $1",
            generic_value=f"'[\"{RARE_TAG}\"]', {limit}",
            index="ix_tasks_tags_gin",
        ),
        Search(
            label=f'title_contains="{TITLE_WORD}"',
            request=pb.ListTasksRequest(page_size=page_size, title_contains=TITLE_WORD),
            matches=lambda task: TITLE_WORD in task.title.lower(),
            literal_sql=f"SELECT {TASK_COLUMNS} FROM tasks WHERE {LIVE} "
            f"AND title ILIKE '%{TITLE_WORD}%' "
            f"{ORDER_LIMIT} {limit}",
            generic_types="varchar, integer",
            generic_where="title ILIKE '%' || $1 || '%' ESCAPE '/'",
            generic_value=f"'{TITLE_WORD}', {limit}",
            index="ix_tasks_title_trgm",
        ),
    )


async def measure_searches(target: str, cfg: PaginationConfig) -> tuple[SearchRun, ...]:
    """Time each search through the server and explain its SQL."""
    runs = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        connection = await asyncpg.connect(cfg.dsn)
        try:
            for search in searches(cfg.page_size):
                runs.append(await _run(stub, connection, search, cfg.repeat))
        finally:
            await connection.close()
    return tuple(runs)


async def _run(
    stub: task_service_pb2_grpc.TaskServiceStub,
    connection: asyncpg.Connection,
    search: Search,
    repeat: int,
) -> SearchRun:
    [median] = await medians_ms(lambda: stub.ListTasks(search.request), repeat=repeat)
    reply: pb.ListTasksResponse = await stub.ListTasks(search.request)
    return SearchRun(
        label=search.label,
        median_ms=median,
        rows=len(reply.tasks),
        all_match=all(search.matches(task) for task in reply.tasks),
        index=search.index,
        plan=await _plan(connection, f"EXPLAIN (ANALYZE, BUFFERS) {search.literal_sql}"),
        generic_plan=await _generic_plan(connection, search),
    )


async def _plan(connection: asyncpg.Connection, sql: str) -> tuple[str, ...]:
    return tuple(row[0] for row in await connection.fetch(sql))


async def _generic_plan(connection: asyncpg.Connection, search: Search) -> tuple[str, ...]:
    statement = (
        f"PREPARE bench_search({search.generic_types}) AS SELECT {TASK_COLUMNS} FROM tasks "
        f"WHERE {LIVE} AND {search.generic_where} {ORDER_LIMIT} $2"
    )
    await connection.execute("SET plan_cache_mode = force_generic_plan")
    await connection.execute(statement)
    try:
        return await _plan(connection, f"EXPLAIN EXECUTE bench_search({search.generic_value})")
    finally:
        await connection.execute("DEALLOCATE bench_search; RESET plan_cache_mode")
