"""The perf bench's tables: throughput, CPU, issue 6's ratios, streams, checks, profile."""

from __future__ import annotations

from bench import table
from bench.perf.results import LABELS, Measurement, PerfResults
from bench.perf.usage import DISTURBED_CORES
from bench.report import seeding_text, stream_rows
from bench.table import Row, Section, yes

MAX_STREAM_RSS_GROWTH_MIB = 32.0
# (numerator, denominator(s), minimum, label): issue 6's targets; the best denominator counts.
TARGETS = (
    ("get_basic", ("handtuned", "handtuned_uvloop"), 0.7, "GetTask BASIC / hand-tuned ceiling"),
    ("get_basic", ("rest_get",), 2.0, "GetTask BASIC / REST GET"),
    ("create", ("rest_post",), 2.0, "CreateTask / REST POST"),
    ("workers2", ("get_basic",), 1.6, "--workers 2 / 1 worker, GetTask BASIC"),
)
# Ratios shown for orientation, without a target.
CONTEXT = (
    ("handtuned", ("constant",), "hand-tuned (asyncio) / transport ceiling"),
    ("get_basic", ("handtuned",), "GetTask BASIC / hand-tuned on asyncio"),
    ("rest_get", ("handtuned",), "REST GET / hand-tuned on asyncio"),
)
MEASUREMENT_WIDTH = 50


def _throughput(r: PerfResults) -> Section:
    cfg = r.cfg
    title = (
        f"Throughput ({cfg.concurrency} requests in flight, {cfg.duration:g} s after a "
        f"{cfg.warmup:g} s warm-up)"
    )
    return title, [Row(m.label, f"{m.rate:,.0f} req/s ({m.run.generator})") for m in _ordered(r)]


def _ordered(r: PerfResults) -> list[Measurement]:
    return [m for key in LABELS if (m := r.get(key)) is not None]


def _cpu(r: PerfResults) -> Section:
    return "CPU during each measurement (cores)", [
        Row(m.label, m.usage.describe()) for m in _ordered(r)
    ]


def _best(r: PerfResults, keys: tuple[str, ...]) -> Measurement | None:
    found = [m for key in keys if (m := r.get(key)) is not None]
    return max(found, key=lambda m: m.rate) if found else None


def _targets(r: PerfResults) -> Section:
    rows = []
    for top, bottoms, minimum, label in TARGETS:
        over, under = r.get(top), _best(r, bottoms)
        if over is None or under is None or not under.rate:
            rows.append(Row(label, NOT_MEASURED, f">= {minimum}"))
            continue
        ratio = over.rate / under.rate
        value = f"{ratio:.2f} ({over.rate:,.0f} / {under.rate:,.0f}{_loop(under)})"
        rows.append(Row(label, value, f">= {minimum}", ratio >= minimum))
    for top, (bottom,), label in CONTEXT:
        over, under = r.get(top), r.get(bottom)
        if over is not None and under is not None and under.rate:
            rows.append(Row(label, f"{over.rate / under.rate:.2f}"))
    return "Targets (issue 6; ratios of this run)", rows + _workers_bound(r)


def _workers_bound(r: PerfResults) -> list[Row]:
    """How much --workers 2 can gain at most: the machine's CPUs over what the one-worker
    GetTask run used in all (server, PostgreSQL, generator, kernel and others)."""
    one = r.get("get_basic")
    if one is None:
        return []
    used = one.usage.total
    value = f"{r.machine.cpus / used:.2f} ({r.machine.cpus} CPUs / {used:.2f} cores busy)"
    return [Row("--workers 2 / 1 bound on this machine", value)]


def _loop(m: Measurement) -> str:
    return {"handtuned": " on asyncio", "handtuned_uvloop": " on uvloop"}.get(m.key, "")


def _stream(r: PerfResults) -> Section | None:
    if not r.streams:
        return None
    title = (
        f"StreamTasks (batch_size {r.cfg.batch_size}, {r.cfg.tasks:,} tasks, "
        f"Python client in the bench process, best of {len(r.streams)})"
    )
    return title, stream_rows(r.streams, r.baselines, r.cfg.tasks, MAX_STREAM_RSS_GROWTH_MIB)


def _statements(r: PerfResults) -> Section | None:
    if not r.statements:
        return None
    rows = [Row(count.label, count.describe()) for count in r.statements]
    rows.append(Row("hand-tuned GetTask (asyncpg fetchrow)", "1: SELECT tasks 1 (by construction)"))
    title = "PostgreSQL statements per call (warm; a pre-ping is BEGIN, ping, ROLLBACK)"
    return title, rows


def _checks(r: PerfResults) -> Section:
    rows = [_errors_row(m) for m in _ordered(r)]
    if r.same_as_handtuned is not None:
        same = r.same_as_handtuned
        rows.append(
            Row("GetTask BASIC bytes equal the hand-tuned server's", yes(same), "yes", same, True)
        )
    if r.blind_spot is not None:
        spot = r.blind_spot
        value = (
            f"{spot.run.completed:,} NOT_FOUND replies counted succeeded by h2load, "
            f"{spot.run.hidden_failures or 0:,} found by the data check (sample: {spot.sample})"
        )
        rows.append(
            Row("h2load blind to grpc-status; bench catches it", value, "all found", spot.shown)
        )
    return "Checks (a failed one fails the run)", rows


def _errors_row(m: Measurement) -> Row:
    errors = m.run.errors
    ok = m.sample_ok and errors == 0
    value = f"sample {m.sample}; {errors:,} errors under load"
    return Row(m.label, value, "sample OK, 0 errors", ok, check=True)


def _generators(r: PerfResults) -> Section:
    rows = []
    for m in _ordered(r):
        detail = m.run.detail
        if m.effect is not None:
            detail += f"; {m.effect:,} writes seen in the database"
        rows.append(Row(m.label, detail))
    return "What the load generators counted", rows


def sections(r: PerfResults) -> list[Section]:
    """Every table, in order."""
    found = [
        _throughput(r),
        _targets(r),
        _stream(r),
        _cpu(r),
        _statements(r),
        _checks(r),
        _generators(r),
    ]
    return [section for section in found if section is not None]


def setup_lines(r: PerfResults) -> list[str]:
    """How the run was set up: machine, data, load generator, peers."""
    cfg = r.cfg
    return [
        *r.machine.lines(),
        f"Data: {cfg.tasks:,} tasks, {cfg.projects:,} projects, {cfg.workers:,} workers; "
        f"seeding {seeding_text(r.seeding)}",
        f"Load: {cfg.concurrency} in flight; gRPC over {cfg.connections} HTTP/2 connections "
        f"x {cfg.streams_per_connection} streams, REST over {cfg.concurrency} HTTP/1.1 "
        "connections",
        f"Load generator: {r.tools.describe()}",
        f"REST peer: {r.rest_stack}",
        f"Task ids: {_ids(r.targets.task_ids)}; projects {_ids(r.targets.project_ids)}",
    ]


def _ids(values: tuple[int, ...]) -> str:
    shown = ", ".join(str(v) for v in values[:4])
    return f"{len(values)} ({shown}, ...)" if len(values) > 4 else shown


def profile_lines(r: PerfResults) -> list[str]:
    """The py-spy summary, if one was recorded."""
    if r.profile is None:
        return []
    return [
        f"py-spy, TaskService GetTask (BASIC) under the same load for {r.cfg.profile_seconds:g} s:",
        *r.profile.lines(),
    ]


NOT_MEASURED = "not measured"


def verdict_line(r: PerfResults) -> str:
    """Targets met or missed, failed checks, targets this run could not judge, disturbance."""
    rows = [row for _, rows in sections(r) for row in rows]
    unjudged = [row.label for row in rows if row.value == NOT_MEASURED]
    parts = [table.summary(sections(r))]
    if unjudged:
        parts[0] = parts[0].replace("All targets met.", "No measured target missed.")
        parts.append("Not measured in this run: " + "; ".join(unjudged) + ".")
    parts.append(disturbance(r))
    return " ".join(part for part in parts if part)


def disturbance(r: PerfResults) -> str:
    """A warning naming the measurements during which something else used the CPU."""
    disturbed = [m for m in _ordered(r) if m.usage.disturbed]
    if not disturbed:
        return ""
    worst = max(disturbed, key=lambda m: m.usage.other)
    return (
        f"Warning: other processes used over {DISTURBED_CORES} cores during "
        f"{len(disturbed)} measurement(s) (worst: {worst.usage.other:.2f} cores during "
        f"{worst.label}); those figures are low."
    )


def failed_checks(r: PerfResults) -> list[str]:
    """Correctness checks that failed."""
    return table.failed_labels(sections(r), check=True)


def console_report(r: PerfResults) -> str:
    """Everything printed at the end of a run."""
    head = "TaskService performance benchmark (issue 6)"
    if r.cfg.smoke:
        head += " (smoke run: checks that it works; the figures mean little)"
    body = [head, *setup_lines(r), table.text_table(sections(r), MEASUREMENT_WIDTH, 40)]
    if r.profile is not None:
        body += ["", "== Profile ==", *profile_lines(r)]
    body += ["", verdict_line(r)]
    return "\n".join(body)
