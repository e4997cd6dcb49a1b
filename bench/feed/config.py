"""The feed bench's configuration and command line."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class FeedBenchConfig:
    """One run: writes/s on process A, watchers on process B, for `duration` seconds."""

    admin_dsn: str  # a database the bench may CREATE DATABASE from
    rate: float  # writes per second, paced (open loop)
    duration: float  # seconds of measured writing
    warmup: float  # seconds of writing before measuring
    watchers: int  # live watchers on B, all matching every write
    clients: int  # watcher client processes they are spread over
    sampled: int  # watchers per client process that decode events (latency samples)
    idle_watchers: int  # watchers opened on B for the memory figure
    tasks: int  # tasks the writes update (spread so rows rarely contend)
    writer_concurrency: int  # writes in flight at most

    @property
    def smoke(self) -> bool:
        return self.duration < 5


def parse(argv: Sequence[str]) -> FeedBenchConfig:
    """The configuration from the command line (`python -m bench.feed --help`)."""
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__)
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--rate", type=float, default=500.0, help="writes/s on process A")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4, help="watcher client processes")
    parser.add_argument("--sampled", type=int, default=3, help="decoding watchers per client")
    parser.add_argument("--idle-watchers", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--writer-concurrency", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="seconds, small numbers")
    args = parser.parse_args(argv)
    url = args.database_url.replace("postgresql+asyncpg://", "postgresql://")
    if args.smoke:
        return FeedBenchConfig(url, 50, 2, 0.5, 4, 2, 1, 20, 50, 8)
    return FeedBenchConfig(
        url,
        args.rate,
        args.duration,
        args.warmup,
        args.watchers,
        args.clients,
        args.sampled,
        args.idle_watchers,
        args.tasks,
        args.writer_concurrency,
    )
