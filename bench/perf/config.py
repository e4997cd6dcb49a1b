"""The perf bench's configuration: database, load shape, durations and tools."""

from __future__ import annotations

from dataclasses import dataclass

from bench.config import DatabaseConfig

PERF_DATABASE = "taskservice_perf"
GENERATORS = ("native", "python", "auto")


@dataclass(frozen=True)
class PerfConfig(DatabaseConfig):
    """One perf run.

    `concurrency` requests are in flight throughout: over `connections` HTTP/2
    connections for gRPC (one load-generator process and request body each, so
    `concurrency / connections` streams per connection), over `concurrency`
    HTTP/1.1 connections for the REST peer. `generator` is "native" (h2load and
    wrk, installed with apt-get when missing and `install` allows), "python"
    (the bench's own asyncio client, for smoke runs) or "auto" (native where
    already installed, never installing).
    """

    duration: float
    warmup: float
    concurrency: int
    connections: int
    batch_size: int
    stream_runs: int
    profile_seconds: float
    quiet_wait: float
    attempts: int
    generator: str
    install: bool
    only: frozenset[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.duration <= 0 or min(self.warmup, self.profile_seconds, self.quiet_wait) < 0:
            raise ValueError("durations must be positive (warm-up, profile, wait may be 0)")
        if (
            min(
                self.concurrency, self.connections, self.batch_size, self.stream_runs, self.attempts
            )
            < 1
        ):
            raise ValueError("concurrency, connections, batch size and runs must be positive")
        if self.concurrency % self.connections:
            raise ValueError("--concurrency must be a multiple of --connections")
        if self.generator not in GENERATORS:
            raise ValueError(f"--load-generator must be one of {', '.join(GENERATORS)}")

    @property
    def streams_per_connection(self) -> int:
        """Concurrent gRPC calls on each HTTP/2 connection."""
        return self.concurrency // self.connections

    def wants(self, key: str) -> bool:
        """Whether the measurement `key` is to run (all of them unless --only names some)."""
        return not self.only or key in self.only
