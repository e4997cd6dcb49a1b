"""What a run measured, as plain data (the report and README are rendered from this)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.servers import Memory

KIB_PER_MIB = 1024


@dataclass(frozen=True)
class PagePair:
    """Median latency of the first and a deep page of the same query."""

    first_ms: float
    deep_ms: float
    deep_ids: tuple[int, ...]

    @property
    def ratio(self) -> float:
        """Deep page latency over first page latency."""
        return self.deep_ms / self.first_ms


@dataclass(frozen=True)
class StreamRun:
    """One full stream as a client received it, and the server's memory around it."""

    tasks: int
    id_sum: int
    first_batch_digest: str
    seconds: float
    before: Memory
    after: Memory
    server_cpu_seconds: float
    client_cpu_seconds: float

    @property
    def rate(self) -> float:
        """Tasks received per second."""
        return self.tasks / self.seconds

    @property
    def server_cpu_us_per_task(self) -> float:
        """Server CPU time per task streamed, microseconds."""
        return self.server_cpu_seconds / self.tasks * 1e6

    @property
    def server_cpu_share(self) -> float:
        """Server CPU time over wall time (1.0 = one core busy throughout)."""
        return self.server_cpu_seconds / self.seconds

    @property
    def client_cpu_share(self) -> float:
        """Client (bench process) CPU time over wall time."""
        return self.client_cpu_seconds / self.seconds

    @property
    def hwm_growth_mib(self) -> float:
        """Growth of the server's peak RSS (VmHWM) over the stream, MiB."""
        return (self.after.hwm_kib - self.before.hwm_kib) / KIB_PER_MIB


@dataclass(frozen=True)
class SearchRun:
    """ListTasks page 1 with one search filter, and the plan of the equivalent SQL."""

    label: str
    median_ms: float
    rows: int
    all_match: bool
    index: str
    plan: tuple[str, ...]
    generic_plan: tuple[str, ...]

    @property
    def index_used(self) -> bool:
        """Whether EXPLAIN ANALYZE (literal values) names the index."""
        return any(self.index in line for line in self.plan)

    @property
    def generic_index_used(self) -> bool:
        """Whether the generic plan of the parameterised statement names the index."""
        return any(self.index in line for line in self.generic_plan)


def fastest(runs: tuple[StreamRun, ...]) -> StreamRun:
    """The run least disturbed by anything else on the machine."""
    return max(runs, key=lambda run: run.rate)


def hungriest(runs: tuple[StreamRun, ...]) -> StreamRun:
    """The run whose server's peak RSS grew most (memory targets take the worst case)."""
    return max(runs, key=lambda run: run.hwm_growth_mib)
