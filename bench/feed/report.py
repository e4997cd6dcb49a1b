"""What a feed run measured, and its report: delivery latency, CPU per event, idle memory."""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.cpu import GroupUsage
from bench.core.database import SeedReport
from bench.core.machine import Machine
from bench.core.report import Report, Row, Section, data_lines
from bench.feed.config import FeedConfig
from bench.feed.metrics import FeedCounters

P50_TARGET_MS = 10.0
P99_TARGET_MS = 100.0
IDLE_RSS_BUDGET_MIB = 64.0
SATURATED_CORES = 0.9  # a single-threaded process this busy is at its limit


@dataclass(frozen=True)
class FeedResults:
    """Everything one run measured; the live figures are of the measured window only."""

    offered: int  # write slots in the window: rate × duration
    sent: int
    skipped: int  # slots that found the writer's concurrency limit reached
    failed: int
    completed: int  # writes A answered OK within the window
    write_p50_ms: float  # UpdateTask on A, as the writers saw it
    write_p99_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_samples: int
    server_cpu_seconds: float  # server B, the window and its tail
    feed: FeedCounters  # server B's /metrics, the window and its tail
    cpu: GroupUsage  # the window
    idle_rss_growth_mib: float
    idle_rss_mib: float
    listeners: int  # LISTEN connections of B with the idle watchers open

    def per(self, count: float) -> str:
        """Server B's CPU per one of `count`, in µs."""
        return f"{self.server_cpu_seconds / count * 1e6:.1f} µs" if count else "n/a"


def _within(label: str, ms: float, target_ms: float) -> Row:
    return Row(label, f"{ms:.1f} ms", f"<= {target_ms:g} ms", ms <= target_ms)


def _ratio(over: float, under: float) -> str:
    return f"{over / under:.1f}" if under else "n/a"


def _cpu_per(cores: float, cfg: FeedConfig, count: int) -> str:
    """CPU per one of `count` things done in the window, from the cores used in it."""
    return f"{cores * cfg.duration / count * 1e6:.0f} µs" if count else "n/a"


def _delivery(cfg: FeedConfig, r: FeedResults) -> list[Row]:
    feed = r.feed
    return [
        Row(
            "writes/s completed on server A (asked)",
            f"{r.completed / cfg.duration:.0f} ({cfg.rate:g})",
        ),
        Row(
            "write slots: sent / skipped at the limit / failed",
            f"{r.sent:,} / {r.skipped:,} / {r.failed:,} of {r.offered:,}",
        ),
        Row("UpdateTask on A, p50 / p99", f"{r.write_p50_ms:.1f} / {r.write_p99_ms:.1f} ms"),
        Row(
            "server A CPU per completed write", _cpu_per(r.cpu.cores["server A"], cfg, r.completed)
        ),
        _within("commit-to-delivery p50", r.latency_p50_ms, P50_TARGET_MS),
        _within("commit-to-delivery p99", r.latency_p99_ms, P99_TARGET_MS),
        Row("latency samples", f"{r.latency_samples:,}"),
        Row("events delivered by server B (window + tail)", f"{feed.events:,.0f}"),
        Row("WatchTasks messages sent by server B", f"{feed.messages:,.0f}"),
        Row("change-feed reads by server B", f"{feed.reads:,.0f}"),
        Row("events per message", _ratio(feed.events, feed.messages)),
        Row("messages per read (one per watcher with news)", _ratio(feed.messages, feed.reads)),
        Row("server B CPU per delivered event", r.per(feed.events)),
        Row("server B CPU per message sent", r.per(feed.messages)),
        Row("server B CPU per feed read", r.per(feed.reads)),
        Row("server B CPU, window + 1 s tail", f"{r.server_cpu_seconds:.1f} s"),
    ]


def _cpu(r: FeedResults) -> Section:
    """Who used the CPU in the window; a process near one core is what limits the rate."""
    rows = [
        Row(name, f"{cores:.2f} cores" + (" (saturated)" if cores >= SATURATED_CORES else ""))
        for name, cores in r.cpu.cores.items()
    ]
    rows += [
        Row("other (kernel, other programs)", f"{r.cpu.other:.2f} cores"),
        Row("machine busy", f"{r.cpu.machine_busy:.0%}"),
    ]
    return "CPU in the measured window (Python processes: one core each at most)", rows


def report(cfg: FeedConfig, machine: Machine, seeding: SeedReport, r: FeedResults) -> Report:
    """Figures against their targets; one LISTEN connection per process is a check."""
    growth = r.idle_rss_growth_mib
    idle = [
        Row(
            f"server B RSS growth, {cfg.idle_watchers:,} idle watchers",
            f"{growth:.1f} MiB (RSS {r.idle_rss_mib:.0f} MiB)",
            f"<= {IDLE_RSS_BUDGET_MIB:g} MiB",
            growth <= IDLE_RSS_BUDGET_MIB,
        ),
        Row("LISTEN connections of server B", str(r.listeners), "1", r.listeners == 1, True),
    ]
    settings = " ".join(cfg.feed_args()) or "the service's defaults"
    return Report(
        title="TaskService change-feed benchmark",
        smoke=cfg.smoke,
        setup=[
            *data_lines(cfg, machine, seeding),
            f"Writes: UpdateTask at {cfg.rate:g}/s on server A (open loop) for {cfg.duration:g} s "
            f"after {cfg.warmup:g} s, from {cfg.writers} writer process(es), at most "
            f"{cfg.writer_concurrency} in flight in all",
            f"Watchers: {cfg.watchers} WatchTasks streams of the written project on server B, in "
            f"{cfg.clients} client processes, {cfg.sampled} per process decoding events",
            f"Server B's feed: {settings}",
        ],
        sections=[
            (f"Delivery to another process ({cfg.watchers} watchers)", _delivery(cfg, r)),
            _cpu(r),
            (f"Idle watchers on server B ({cfg.idle_watchers:,})", idle),
        ],
    )
