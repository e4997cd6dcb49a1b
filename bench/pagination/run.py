"""The pagination bench: keyset pages against OFFSET, StreamTasks against asyncpg, searches."""

from __future__ import annotations

from bench.core.run import say
from bench.core.servers import service_server
from bench.core.streams import alternate_streams
from bench.pagination.config import PaginationConfig
from bench.pagination.pages import measure_list_pages, measure_offset_pages
from bench.pagination.report import Results
from bench.pagination.search import measure_searches


async def measure(cfg: PaginationConfig) -> Results:
    """Every measurement, in order, on the seeded database."""
    async with service_server(cfg) as server:
        say(f"ListTasks: walking to page {cfg.deep_page:,}, then {cfg.repeat} timed pairs")
        pages = await measure_list_pages(server.target, cfg)
        say("ListTasks: search filters")
        searches = await measure_searches(server.target, cfg)
    say("SQL OFFSET baseline")
    offset = await measure_offset_pages(cfg)
    streams = await alternate_streams(cfg, cfg.stream_runs, cfg.batch_size, say)
    return Results(pages, offset, streams, searches)
