"""What a scale-out run measured, and its report: each step's throughput against its baseline."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from bench.core.database import SeedReport
from bench.core.machine import Machine
from bench.core.report import Report, Row, data_lines
from bench.scaleout.config import ScaleoutConfig
from bench.scaleout.load import Throughput


@dataclass
class Comparison:
    """One call measured on a baseline and on a scaled-out server, a run per round each."""

    title: str
    target: float | None = None  # the least scaled / baseline ratio aimed at
    baseline: list[Throughput] = field(default_factory=list)
    scaled: list[Throughput] = field(default_factory=list)

    @staticmethod
    def median(runs: list[Throughput]) -> float:
        """The median calls per second of `runs`."""
        return statistics.median(run.per_second for run in runs) if runs else 0.0

    @property
    def ratio(self) -> float:
        """Scaled-out over baseline, medians."""
        base = self.median(self.baseline)
        return self.median(self.scaled) / base if base else 0.0

    def failed(self) -> Counter[str]:
        """Calls not OK, by gRPC code, on either side."""
        return sum((run.failed for run in (*self.baseline, *self.scaled)), Counter())

    def row(self) -> Row:
        """The ratio, both medians, and the target if there is one."""
        base, scaled = self.median(self.baseline), self.median(self.scaled)
        value = f"{self.ratio:.2f} ({scaled:,.0f} / {base:,.0f} calls/s)"
        if self.target is None:
            return Row(self.title, value)
        return Row(self.title, value, f">= {self.target}", self.ratio >= self.target)

    def rounds(self) -> str:
        """Every run's calls per second, side by side."""

        def rates(runs: list[Throughput]) -> str:
            return ", ".join(f"{run.per_second:,.0f}" for run in runs)

        return f"{self.title}: baseline {rates(self.baseline)}; scaled out {rates(self.scaled)}"


@dataclass(frozen=True)
class ScaleoutResults:
    """Every comparison of one run, the pooler's first."""

    comparisons: tuple[Comparison, ...]


def report(
    cfg: ScaleoutConfig, machine: Machine, seeding: SeedReport, r: ScaleoutResults
) -> Report:
    """Ratios per step, the failed-call checks, and every round's figures."""
    pooler, replica = r.comparisons[:2], r.comparisons[2:]
    checks = []
    for comparison in r.comparisons:
        failed = comparison.failed()
        value = ", ".join(f"{code} {count:,}" for code, count in failed.items()) or "0"
        checks.append(Row(f"{comparison.title}: calls not OK", value, "0", not failed, True))
    return Report(
        title="TaskService scale-out benchmark",
        smoke=cfg.smoke,
        setup=[
            *data_lines(cfg, machine, seeding),
            f"Load: {cfg.in_flight} calls in flight (h2load), counted by the server; "
            f"{cfg.rounds} alternating round(s) of {cfg.seconds:g} s a side, the median counts",
            "The client, the server, PgBouncer and both PostgreSQL servers share this "
            "machine's cores: the replica rows measure routing overhead, not added capacity",
        ],
        sections=[
            (
                "PgBouncer, transaction mode (database_pooler=transaction)",
                [c.row() for c in pooler],
            ),
            ("One streaming standby as read replica", [c.row() for c in replica]),
            ("Checks (a failed one fails the run)", checks),
        ],
        appendix_title="Calls per second of every round",
        appendix=[comparison.rounds() for comparison in r.comparisons],
    )
