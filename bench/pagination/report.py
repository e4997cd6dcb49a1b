"""The pagination bench's table and checks, and the StreamTasks rows both benches report."""

from __future__ import annotations

from dataclasses import dataclass

from bench import table
from bench.config import PaginationConfig
from bench.database import SeedReport
from bench.machine import Machine
from bench.results import KIB_PER_MIB, PagePair, SearchRun, StreamRun, fastest, hungriest
from bench.table import Row, Section, yes

MAX_PAGE_RATIO = 1.5
MAX_RSS_GROWTH_MIB = 64.0
MIN_STREAM_RATIO = 0.8
HEADINGS = (
    "ListTasks pagination",
    "SQL OFFSET baseline",
    "StreamTasks",
    "Search filters",
    "EXPLAIN",
)


@dataclass(frozen=True)
class Results:
    """Everything one run measured."""

    cfg: PaginationConfig
    machine: Machine
    seeding: SeedReport
    pages: PagePair
    offset: PagePair
    streams: tuple[StreamRun, ...]
    baselines: tuple[StreamRun, ...]
    searches: tuple[SearchRun, ...]


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _mib(kib: int) -> str:
    return f"{kib / KIB_PER_MIB:.1f} MiB"


def _pagination(r: Results) -> Section:
    cfg, pages = r.cfg, r.pages
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


def _offset(r: Results) -> Section:
    cfg, offset = r.cfg, r.offset
    same = offset.deep_ids == r.pages.deep_ids
    return "SQL OFFSET baseline (asyncpg, same query and order)", [
        Row("OFFSET 0, median", _ms(offset.first_ms)),
        Row(f"OFFSET {cfg.deep_offset:,}, median", _ms(offset.deep_ms)),
        Row("deep / first", f"{offset.ratio:.1f}", "baseline (expected >> 1.5)"),
        Row(f"same rows as ListTasks page {cfg.deep_page:,}", yes(same), "yes", same, check=True),
    ]


def _stream(r: Results) -> Section:
    title = (
        f"StreamTasks (batch_size {r.cfg.batch_size}, {r.cfg.tasks:,} tasks, "
        f"client in the bench process, best of {len(r.streams)})"
    )
    return title, stream_rows(r.streams, r.baselines, r.cfg.tasks, MAX_RSS_GROWTH_MIB)


def stream_rows(
    streams: tuple[StreamRun, ...],
    baselines: tuple[StreamRun, ...],
    tasks: int,
    max_growth_mib: float,
) -> list[Row]:
    """Throughput against the asyncpg baseline, server memory, and the completeness checks."""
    runs = (*streams, *baselines)
    complete = all(run.tasks == tasks for run in runs) and len({run.id_sum for run in runs}) == 1
    same = len({run.first_batch_digest for run in runs}) == 1
    return [
        *_throughput(streams, baselines),
        *_memory(hungriest(streams), hungriest(baselines), max_growth_mib),
        Row("every task received, same ids as baseline", yes(complete), "yes", complete, True),
        Row("first batch's Task messages equal baseline's", yes(same), "yes", same, check=True),
    ]


def _rates(runs: tuple[StreamRun, ...]) -> str:
    best = fastest(runs)
    others = ", ".join(f"{run.rate:,.0f}" for run in runs)
    return f"{best.rate:,.0f} tasks/s ({best.seconds:.1f} s; runs {others})"


def _cpu(run: StreamRun) -> str:
    return (
        f"{run.server_cpu_us_per_task:.1f} µs/task; server {run.server_cpu_share:.0%}, "
        f"client {run.client_cpu_share:.0%} of a core"
    )


def _throughput(streams: tuple[StreamRun, ...], baselines: tuple[StreamRun, ...]) -> list[Row]:
    stream, base = fastest(streams), fastest(baselines)
    ratio = stream.rate / base.rate
    return [
        Row("TaskService StreamTasks", _rates(streams)),
        Row("asyncpg keyset stream (bench/)", _rates(baselines)),
        Row(
            "StreamTasks / asyncpg",
            f"{ratio:.2f}",
            f">= {MIN_STREAM_RATIO}",
            ratio >= MIN_STREAM_RATIO,
        ),
        Row("TaskService server CPU", _cpu(stream)),
        Row("asyncpg server CPU", _cpu(base)),
    ]


def _memory(stream: StreamRun, base: StreamRun, max_growth_mib: float) -> list[Row]:
    growth = stream.hwm_growth_mib
    limit = f"<= {max_growth_mib:.0f} MiB"
    return [
        Row("server VmHWM before stream", _mib(stream.before.hwm_kib)),
        Row("server VmHWM after stream", _mib(stream.after.hwm_kib)),
        Row(
            "server peak RSS growth (worst run)",
            f"{growth:.1f} MiB",
            limit,
            growth <= max_growth_mib,
        ),
        Row("server VmRSS after stream", _mib(stream.after.rss_kib)),
        Row("asyncpg server peak RSS growth", f"{base.hwm_growth_mib:.1f} MiB"),
    ]


def _searches(r: Results) -> Section:
    rows = []
    for run in r.searches:
        hits = run.rows > 0 and run.all_match
        rows += [
            Row(f"{run.label}, median", f"{_ms(run.median_ms)} ({run.rows} rows)"),
            Row(f"{run.label}, rows all match", yes(hits), "yes", hits, check=True),
            Row(f"EXPLAIN uses {run.index}", yes(run.index_used), "yes", run.index_used),
            Row(f"generic plan uses {run.index}", yes(run.generic_index_used)),
        ]
    return f"Search filters (ListTasks page 1, {r.cfg.tasks:,} rows)", rows


def sections(r: Results) -> list[Section]:
    """The table, section by section."""
    return [_pagination(r), _offset(r), _stream(r), _searches(r)]


def text_table(r: Results) -> str:
    """The table for the console."""
    return table.text_table(sections(r))


def markdown_table(r: Results) -> str:
    """The table as Markdown, one table per section."""
    return table.markdown_table(sections(r))


def plans_text(r: Results) -> str:
    """EXPLAIN ANALYZE output of each search, and its generic plan."""
    lines = []
    for run in r.searches:
        lines += [f"-- {run.label}: EXPLAIN (ANALYZE, BUFFERS), values inlined", *run.plan, ""]
        lines += [
            f"-- {run.label}: generic plan of the parameterised statement",
            *run.generic_plan,
            "",
        ]
    return "\n".join(lines).rstrip()


def failed_checks(r: Results) -> list[str]:
    """Correctness checks that failed: wrong rows, lost tasks."""
    return table.failed_labels(sections(r), check=True)


def missed_targets(r: Results) -> list[str]:
    """Performance targets that were missed."""
    return table.failed_labels(sections(r), check=False)


def seeding_text(seeding: SeedReport) -> str:
    """One line on how the data got there."""
    if seeding.reused:
        return "reused an already seeded database (--keep)"
    return (
        f"{seeding.total_seconds:.0f} s (tables + COPY {seeding.copy_seconds:.0f} s, "
        f"indexes {seeding.index_seconds:.0f} s, VACUUM ANALYZE {seeding.vacuum_seconds:.0f} s)"
    )


def console_report(r: Results) -> str:
    """Everything printed at the end of a run."""
    head = f"TaskService pagination benchmark: {r.cfg.tasks:,} tasks, {r.cfg.projects:,} projects"
    if r.cfg.smoke:
        head += " (smoke run: checks that it works; the figures mean little)"
    body = [head, *r.machine.lines(), f"Seeding: {seeding_text(r.seeding)}", text_table(r)]
    body += ["", "== EXPLAIN ==", plans_text(r), "", table.summary(sections(r))]
    return "\n".join(body)
