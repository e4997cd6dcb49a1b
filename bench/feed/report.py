"""The feed bench's figures as a Markdown table, with the targets."""

from __future__ import annotations

from bench.feed.config import FeedBenchConfig
from bench.feed.run import FeedBenchResults

P50_TARGET_MS = 10.0
P99_TARGET_MS = 100.0
IDLE_RSS_BUDGET_MIB = 64.0


def table(cfg: FeedBenchConfig, r: FeedBenchResults) -> str:
    """Figures, targets, and whether each was met."""

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    rows = [
        (
            "writes/s committed on process A (target rate)",
            f"{r.achieved_rate:.0f} ({cfg.rate:.0f})",
            "",
            "",
        ),
        (
            f"commit-to-delivery p50 on process B, {cfg.watchers} watchers",
            f"{r.latency_p50_ms:.1f} ms",
            f"<= {P50_TARGET_MS:.0f} ms",
            met(r.latency_p50_ms <= P50_TARGET_MS),
        ),
        (
            "commit-to-delivery p99",
            f"{r.latency_p99_ms:.1f} ms",
            f"<= {P99_TARGET_MS:.0f} ms",
            met(r.latency_p99_ms <= P99_TARGET_MS),
        ),
        ("latency samples", str(r.latency_samples), "", ""),
        ("events delivered (all watchers, window)", f"{r.delivered_events:,}", "", ""),
        ("server B CPU per delivered event", f"{r.cpu_us_per_event:.1f} µs", "", ""),
        ("server B CPU, window + 1 s tail", f"{r.server_cpu_seconds:.1f} s", "", ""),
        (
            f"server B RSS growth, {cfg.idle_watchers} idle watchers",
            f"{r.idle_rss_growth_mib:.1f} MiB (RSS {r.idle_rss_mib:.0f} MiB)",
            f"<= {IDLE_RSS_BUDGET_MIB:.0f} MiB",
            met(r.idle_rss_growth_mib <= IDLE_RSS_BUDGET_MIB),
        ),
        ("LISTEN connections of server B", str(r.listeners), "1", met(r.listeners == 1)),
    ]
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)
