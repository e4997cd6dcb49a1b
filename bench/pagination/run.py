"""The pagination bench: `python -m bench pagination [--smoke] [--keep] [...]`.

Seeds (or reuses) a benchmark database, measures keyset pages against OFFSET,
StreamTasks against the asyncpg baseline and the search filters, prints the
table, and on a full run rewrites its section of bench/README.md. Exit status
0 unless a correctness check failed (missed performance targets are reported,
not fatal).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bench.cli import (
    add_database_options,
    add_size_options,
    database_options,
    resolve_sizes,
    say,
)
from bench.config import FULL_DATABASE, PaginationConfig
from bench.database import drop_database, prepare_database
from bench.listing import measure_list_pages, measure_offset_pages
from bench.machine import describe_machine
from bench.readme import README, write_readme
from bench.report import Results, console_report, failed_checks
from bench.search import measure_searches
from bench.servers import service_server
from bench.streaming import alternate_streams

# (full, smoke) defaults of the size options.
DEFAULTS = {
    "tasks": (1_000_000, 2_000),
    "projects": (1_000, 10),
    "workers": (200, 10),
    "deep_page": (2_000, 20),
    "repeat": (51, 5),
    "stream_runs": (2, 1),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench pagination", description=__doc__.splitlines()[0]
    )
    add_database_options(parser, FULL_DATABASE)
    add_size_options(parser, DEFAULTS)
    parser.add_argument("--page-size", type=int, default=50, help="ListTasks page size")
    parser.add_argument("--batch-size", type=int, default=500, help="StreamTasks batch size")
    return parser


def config_from(args: argparse.Namespace) -> PaginationConfig:
    """Resolve smoke/full defaults into a configuration."""
    return PaginationConfig(
        **database_options(args, FULL_DATABASE, README),
        **resolve_sizes(args, DEFAULTS),
        page_size=args.page_size,
        batch_size=args.batch_size,
    )


async def run(cfg: PaginationConfig) -> Results:
    """Every measurement, in order; the database is dropped at the end if asked."""
    try:
        say(f"Preparing database {cfg.database} ({cfg.tasks:,} tasks, {cfg.projects:,} projects)")
        seeding = await prepare_database(cfg)
        async with service_server(cfg) as server:
            say(f"ListTasks: walking to page {cfg.deep_page:,}, then {cfg.repeat} timed pairs")
            pages = await measure_list_pages(server.target, cfg)
            say("ListTasks: search filters")
            searches = await measure_searches(server.target, cfg)
        say("SQL OFFSET baseline")
        offset = await measure_offset_pages(cfg)
        streams, baselines = await alternate_streams(cfg, cfg.stream_runs, cfg.batch_size, say)
        machine = await describe_machine(cfg.dsn)
    finally:
        if cfg.drop_after:
            await drop_database(cfg)
    return Results(cfg, machine, seeding, pages, offset, streams, baselines, searches)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench pagination`."""
    args = _parser().parse_args(argv)
    try:
        cfg = config_from(args)
    except ValueError as error:
        sys.stderr.write(f"{error}\n")
        return 2
    # Handlers on the root logger keep Alembic from installing its INFO logging.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = asyncio.run(run(cfg))
    say("\n" + console_report(results))
    if cfg.readme is not None:
        write_readme(results, cfg.readme)
        say(f"\nWrote {cfg.readme}")
    return 1 if failed_checks(results) else 0
