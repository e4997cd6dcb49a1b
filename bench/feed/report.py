"""What a feed run measured, and its report: delivery latency, CPU per event, idle memory."""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.database import SeedReport
from bench.core.machine import Machine
from bench.core.report import Report, Row, data_lines
from bench.feed.config import FeedConfig

P50_TARGET_MS = 10.0
P99_TARGET_MS = 100.0
IDLE_RSS_BUDGET_MIB = 64.0


@dataclass(frozen=True)
class FeedResults:
    """Everything one run measured."""

    achieved_rate: float  # writes/s committed in the measured window
    latency_p50_ms: float
    latency_p99_ms: float
    latency_samples: int
    delivered_events: int  # to all watchers in the window
    server_cpu_seconds: float  # server B, the window and its tail
    idle_rss_growth_mib: float
    idle_rss_mib: float
    listeners: int  # LISTEN connections of B with the idle watchers open

    @property
    def cpu_us_per_event(self) -> float:
        """Server B's CPU per delivered event, µs."""
        return self.server_cpu_seconds / max(self.delivered_events, 1) * 1e6


def _within(label: str, ms: float, target_ms: float) -> Row:
    return Row(label, f"{ms:.1f} ms", f"<= {target_ms:g} ms", ms <= target_ms)


def report(cfg: FeedConfig, machine: Machine, seeding: SeedReport, r: FeedResults) -> Report:
    """Figures against their targets; one LISTEN connection per process is a check."""
    growth = r.idle_rss_growth_mib
    delivery = [
        Row("writes/s committed on server A (asked)", f"{r.achieved_rate:.0f} ({cfg.rate:g})"),
        _within("commit-to-delivery p50", r.latency_p50_ms, P50_TARGET_MS),
        _within("commit-to-delivery p99", r.latency_p99_ms, P99_TARGET_MS),
        Row("latency samples", f"{r.latency_samples:,}"),
        Row("events delivered (all watchers, window)", f"{r.delivered_events:,}"),
        Row("server B CPU per delivered event", f"{r.cpu_us_per_event:.1f} µs"),
        Row("server B CPU, window + 1 s tail", f"{r.server_cpu_seconds:.1f} s"),
    ]
    idle = [
        Row(
            f"server B RSS growth, {cfg.idle_watchers:,} idle watchers",
            f"{growth:.1f} MiB (RSS {r.idle_rss_mib:.0f} MiB)",
            f"<= {IDLE_RSS_BUDGET_MIB:g} MiB",
            growth <= IDLE_RSS_BUDGET_MIB,
        ),
        Row("LISTEN connections of server B", str(r.listeners), "1", r.listeners == 1, True),
    ]
    return Report(
        title="TaskService change-feed benchmark",
        smoke=cfg.smoke,
        setup=[
            *data_lines(cfg, machine, seeding),
            f"Writes: UpdateTask at {cfg.rate:g}/s on server A for {cfg.duration:g} s after "
            f"{cfg.warmup:g} s, at most {cfg.writer_concurrency} in flight",
            f"Watchers: {cfg.watchers} WatchTasks streams of the written project on server B, in "
            f"{cfg.clients} client processes, {cfg.sampled} per process decoding events",
        ],
        sections=[
            (f"Delivery to another process ({cfg.watchers} watchers)", delivery),
            (f"Idle watchers on server B ({cfg.idle_watchers:,})", idle),
        ],
    )
