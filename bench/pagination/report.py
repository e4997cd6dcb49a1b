"""The pagination bench's report: keyset pages against OFFSET, streams, searches and their plans."""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.database import SeedReport
from bench.core.machine import Machine
from bench.core.report import Report, Row, Section, data_lines, yes
from bench.core.streams import Streams
from bench.pagination.config import PaginationConfig
from bench.pagination.pages import PagePair
from bench.pagination.search import SearchRun

MAX_PAGE_RATIO = 1.5
MAX_RSS_GROWTH_MIB = 64.0


@dataclass(frozen=True)
class Results:
    """Everything one run measured."""

    pages: PagePair
    offset: PagePair
    streams: Streams
    searches: tuple[SearchRun, ...]


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _pagination(cfg: PaginationConfig, pages: PagePair) -> Section:
    title = f"ListTasks pagination (page_size {cfg.page_size}, all projects, create_time desc)"
    return title, [
        Row("page 1, median", _ms(pages.first_ms)),
        Row(f"page {cfg.deep_page:,}, median", _ms(pages.deep_ms)),
        Row(
            "deep / first",
            f"{pages.ratio:.2f}",
            f"<= {MAX_PAGE_RATIO}",
            pages.ratio <= MAX_PAGE_RATIO,
        ),
    ]


def _offset(cfg: PaginationConfig, r: Results) -> Section:
    offset, same = r.offset, r.offset.deep_ids == r.pages.deep_ids
    return "SQL OFFSET baseline (asyncpg, same query and order)", [
        Row("OFFSET 0, median", _ms(offset.first_ms)),
        Row(f"OFFSET {cfg.deep_offset:,}, median", _ms(offset.deep_ms)),
        Row("deep / first", f"{offset.ratio:.1f}", "baseline (expected >> 1.5)"),
        Row(f"same rows as ListTasks page {cfg.deep_page:,}", yes(same), "yes", same, check=True),
    ]


def _searches(cfg: PaginationConfig, searches: tuple[SearchRun, ...]) -> Section:
    rows = []
    for run in searches:
        hits = run.rows > 0 and run.all_match
        rows += [
            Row(f"{run.label}, median", f"{_ms(run.median_ms)} ({run.rows} rows)"),
            Row(f"{run.label}, rows all match", yes(hits), "yes", hits, check=True),
            Row(f"EXPLAIN uses {run.index}", yes(run.index_used), "yes", run.index_used),
            Row(f"generic plan uses {run.index}", yes(run.generic_index_used)),
        ]
    return f"Search filters (ListTasks page 1, {cfg.tasks:,} rows)", rows


def _plans(searches: tuple[SearchRun, ...]) -> list[str]:
    """EXPLAIN ANALYZE output of each search, and its generic plan."""
    lines = []
    for run in searches:
        lines += [f"-- {run.label}: EXPLAIN (ANALYZE, BUFFERS), values inlined", *run.plan, ""]
        lines += [f"-- {run.label}: generic plan of the parameterised statement", *run.generic_plan]
        lines.append("")
    return lines[:-1]


def report(cfg: PaginationConfig, machine: Machine, seeding: SeedReport, r: Results) -> Report:
    """The tables, checks and plans of one run."""
    return Report(
        title=f"TaskService pagination benchmark: {cfg.tasks:,} tasks, {cfg.projects:,} projects",
        smoke=cfg.smoke,
        setup=[*data_lines(cfg, machine, seeding), f"Repetitions: {cfg.repeat} per median"],
        sections=[
            _pagination(cfg, r.pages),
            _offset(cfg, r),
            r.streams.section(cfg.tasks, cfg.batch_size, MAX_RSS_GROWTH_MIB),
            _searches(cfg, r.searches),
        ],
        appendix_title="Plans",
        appendix=_plans(r.searches),
    )
