"""What a perf run measured, and its report: throughput, ratios, streams, CPU, checks, profile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.core.database import SeedReport
from bench.core.machine import Machine
from bench.core.report import NOT_MEASURED, Report, Row, Section, data_lines, yes
from bench.core.streams import Streams
from bench.perf.calls import Targets
from bench.perf.config import LABELS, ONE_CHANNEL, ONE_CHANNEL_SERVER_ARGS, PerfConfig, rest_stack
from bench.perf.loadgen import LoadRun
from bench.perf.profile import Profile
from bench.perf.roundtrips import StatementCount
from bench.perf.usage import DISTURBED_CORES, Usage

if TYPE_CHECKING:  # bench.perf.tracing imports this module, through bench.perf.measure
    from bench.perf.tracing import TracingCost

MAX_STREAM_RSS_GROWTH_MIB = 32.0
# (numerator, denominator(s), minimum, label): the targets; the best denominator counts.
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


@dataclass(frozen=True)
class Measurement:
    """One call under load on one server."""

    key: str
    run: LoadRun
    usage: Usage
    sample: str  # how the sample calls went, e.g. "16/16 OK"
    sample_ok: bool
    effect: int | None = None  # writes the database shows for the measured run

    @property
    def label(self) -> str:
        """Human name of the measurement."""
        return LABELS[self.key]


@dataclass(frozen=True)
class BlindSpot:
    """h2load against calls that all fail at the gRPC level (GetTask of a missing id)."""

    run: LoadRun
    sample: str

    @property
    def shown(self) -> bool:
        """h2load called them succeeded, and the bench's data check found every one."""
        run = self.run
        return run.completed > 0 and run.failed == 0 and run.hidden_failures == run.completed


@dataclass(frozen=True)
class PerfResults:
    """Everything one perf run measured."""

    targets: Targets
    measurements: tuple[Measurement, ...]
    streams: Streams | None
    tracing: TracingCost | None
    same_as_handtuned: bool | None
    blind_spot: BlindSpot | None
    profile: Profile | None
    statements: tuple[StatementCount, ...]

    def get(self, key: str) -> Measurement | None:
        """The measurement `key`, if it ran."""
        return next((m for m in self.measurements if m.key == key), None)

    def ordered(self) -> list[Measurement]:
        """The measurements that ran, in report order."""
        return [m for key in LABELS if (m := self.get(key)) is not None]


def _throughput(cfg: PerfConfig, r: PerfResults) -> Section:
    title = (
        f"Throughput ({cfg.concurrency} requests in flight, {cfg.duration:g} s after a "
        f"{cfg.warmup:g} s warm-up)"
    )
    rows = [m for m in r.ordered() if m.key not in ONE_CHANNEL]
    return title, [Row(m.label, f"{m.run.rate:,.0f} req/s ({m.run.generator})") for m in rows]


def _best(r: PerfResults, keys: tuple[str, ...]) -> Measurement | None:
    found = [m for key in keys if (m := r.get(key)) is not None]
    return max(found, key=lambda m: m.run.rate) if found else None


def _targets(machine: Machine, r: PerfResults) -> Section:
    rows = []
    for top, bottoms, minimum, label in TARGETS:
        over, under = r.get(top), _best(r, bottoms)
        if over is None or under is None or not under.run.rate:
            rows.append(Row(label, NOT_MEASURED, f">= {minimum}"))
            continue
        ratio = over.run.rate / under.run.rate
        loop = {"handtuned": " on asyncio", "handtuned_uvloop": " on uvloop"}.get(under.key, "")
        value = f"{ratio:.2f} ({over.run.rate:,.0f} / {under.run.rate:,.0f}{loop})"
        rows.append(Row(label, value, f">= {minimum}", ratio >= minimum))
    for top, (bottom,), label in CONTEXT:
        over, under = r.get(top), r.get(bottom)
        if over is not None and under is not None and under.run.rate:
            rows.append(Row(label, f"{over.run.rate / under.run.rate:.2f}"))
    one = r.get("get_basic")
    if one is not None:
        # What --workers 2 can gain at most: the CPUs over what the one-worker GetTask run
        # kept busy in all (server, PostgreSQL, generator, kernel and others).
        used = one.usage.total
        value = f"{machine.cpus / used:.2f} ({machine.cpus} CPUs / {used:.2f} cores busy)"
        rows.append(Row("--workers 2 / 1 bound on this machine", value))
    return "Targets (ratios of this run)", rows


def _one_channel(r: PerfResults) -> Section | None:
    found = [m for key in ONE_CHANNEL if (m := r.get(key)) is not None]
    if not found:
        return None
    title = (
        "GetTask BASIC on ONE grpc.aio channel (default options; one client process, N callers; "
        f"TaskService {' '.join(ONE_CHANNEL_SERVER_ARGS)})"
    )
    rows = []
    for m in found:
        p50, p99 = m.run.latency_ms or (0.0, 0.0)
        latency = f"p50 {p50:,.1f} ms, p99 {p99:,.1f} ms"
        value = f"{m.run.rate:,.0f} req/s; {latency}; {m.run.errors:,} errors"
        rows.append(Row(f"{ONE_CHANNEL[m.key]:,} in flight", value))
    return title, rows


def _streams(cfg: PerfConfig, r: PerfResults) -> Section | None:
    if r.streams is None:
        return None
    return r.streams.section(cfg.tasks, cfg.batch_size, MAX_STREAM_RSS_GROWTH_MIB)


def _statements(r: PerfResults) -> Section | None:
    if not r.statements:
        return None
    rows = [Row(count.label, count.describe()) for count in r.statements]
    rows.append(Row("hand-tuned GetTask (asyncpg fetchrow)", "1: SELECT tasks 1 (by construction)"))
    return "PostgreSQL statements per call (warm; a pre-ping is BEGIN, ping, ROLLBACK)", rows


def _checks(r: PerfResults) -> Section:
    rows = []
    for m in r.ordered():
        value = f"sample {m.sample}; {m.run.errors:,} errors under load"
        rows.append(
            Row(m.label, value, "sample OK, 0 errors", m.sample_ok and not m.run.errors, True)
        )
    if r.same_as_handtuned is not None:
        same = r.same_as_handtuned
        label = "GetTask BASIC bytes equal the hand-tuned server's"
        rows.append(Row(label, yes(same), "yes", same, check=True))
    if r.blind_spot is not None:
        spot = r.blind_spot
        value = (
            f"{spot.run.completed:,} NOT_FOUND replies counted succeeded by h2load, "
            f"{spot.run.hidden_failures or 0:,} found by the data check (sample: {spot.sample})"
        )
        label = "h2load blind to grpc-status; bench catches it"
        rows.append(Row(label, value, "all found", spot.shown, check=True))
    return "Checks (a failed one fails the run)", rows


def _generators(r: PerfResults) -> Section:
    rows = []
    for m in r.ordered():
        written = "" if m.effect is None else f"; {m.effect:,} writes seen in the database"
        rows.append(Row(m.label, m.run.detail + written))
    return "What the load generators counted", rows


def _ids(values: tuple[int, ...]) -> str:
    shown = ", ".join(str(v) for v in values[:4])
    return f"{len(values)} ({shown}, ...)" if len(values) > 4 else shown


def _disturbance(r: PerfResults) -> list[str]:
    """A warning naming the measurements during which something else used the CPU."""
    disturbed = [m for m in r.ordered() if m.usage.disturbed]
    if not disturbed:
        return []
    worst = max(disturbed, key=lambda m: m.usage.other)
    return [
        f"Warning: other processes used over {DISTURBED_CORES} cores during "
        f"{len(disturbed)} measurement(s) (worst: {worst.usage.other:.2f} cores during "
        f"{worst.label}); those figures are low."
    ]


def report(cfg: PerfConfig, machine: Machine, seeding: SeedReport, r: PerfResults) -> Report:
    """The tables, checks and profile of one run."""
    sections = [
        _throughput(cfg, r),
        _targets(machine, r),
        _one_channel(r),
        _streams(cfg, r),
        None if r.tracing is None else r.tracing.section(cfg),
        (
            "CPU during each measurement (cores)",
            [Row(m.label, m.usage.describe()) for m in r.ordered()],
        ),
        _statements(r),
        _checks(r),
        _generators(r),
    ]
    profile = ["Not profiled in this run."]
    if r.profile is not None:
        seconds = cfg.profile_seconds
        head = f"py-spy, TaskService GetTask (BASIC) under the same load for {seconds:g} s:"
        profile = [head, *r.profile.lines()]
    return Report(
        title="TaskService performance benchmark",
        smoke=cfg.smoke,
        setup=[
            *data_lines(cfg, machine, seeding),
            f"Load: {cfg.concurrency} in flight; gRPC over {cfg.connections} HTTP/2 connections "
            f"x {cfg.streams_per_connection} streams, REST over {cfg.concurrency} HTTP/1.1 "
            "connections",
            f"Load generator: {cfg.tools.describe()}",
            f"REST peer: {rest_stack()}",
            f"Task ids: {_ids(r.targets.task_ids)}; projects {_ids(r.targets.project_ids)}",
        ],
        sections=[section for section in sections if section is not None],
        appendix_title="Where GetTask's time goes",
        appendix=profile,
        notes=_disturbance(r),
    )
