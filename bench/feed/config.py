"""The feed bench's configuration: the write rate, the watchers, and how long it measures."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from bench.core.config import DatabaseConfig, SetupError, data_sizes

DATABASE = "taskservice_feed"
# The writes on server A: per second, and seconds measured after a warm-up.
WRITES = {"rate": (500.0, 50.0), "duration": (20.0, 2.0), "warmup": (3.0, 0.5)}
# The watchers on server B, the client processes they are spread over, those decoding events.
WATCHERS = {
    "watchers": (100, 4),
    "clients": (4, 2),
    "sampled": (3, 1),
    "idle_watchers": (1_000, 20),
}
# Ten projects: the writes update the tasks of the first, idle watchers watch the second.
SIZES = {
    **data_sizes(tasks=20_000, projects=10),
    **WRITES,
    **WATCHERS,
    "writer_concurrency": (64, 8),
    "writers": (2, 1),
}


@dataclass(frozen=True)
class FeedConfig(DatabaseConfig):
    """One run: `rate` writes/s on server A for `duration` seconds (after `warmup`), sent by
    `writers` processes with `writer_concurrency` calls in flight at most in all, read by
    `watchers` watchers on server B, spread over `clients` client processes of which
    `sampled` watchers each decode events for latency; then `idle_watchers` on B."""

    rate: float
    duration: float
    warmup: float
    watchers: int
    clients: int
    sampled: int
    idle_watchers: int
    writer_concurrency: int
    writers: int
    # Server B's change-feed settings (None: the service's default), the CLI flags they become.
    feed_min_read_interval: float | None = None
    feed_batch_size: int | None = None

    def feed_args(self) -> tuple[str, ...]:
        """Server B's command-line flags for the feed settings given."""
        given = {
            "--feed-min-read-interval": self.feed_min_read_interval,
            "--feed-batch-size": self.feed_batch_size,
        }
        return tuple(part for flag, v in given.items() if v is not None for part in (flag, str(v)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.rate, self.duration) <= 0 or self.warmup < 0:
            raise SetupError("rate and duration must be positive, warm-up not negative")
        counts = (self.watchers, self.clients, self.sampled, self.writer_concurrency, self.writers)
        if min(*counts, self.idle_watchers) < 1 or self.projects < 2:
            raise SetupError(
                "watchers, clients, writers and concurrency must be positive; 2+ projects"
            )


def add_options(parser: argparse.ArgumentParser) -> None:
    """Server B's change-feed settings, passed on to it as its own flags."""
    parser.add_argument(
        "--feed-min-read-interval",
        type=float,
        help="server B's feed_min_read_interval, seconds (default: the service's)",
    )
    parser.add_argument(
        "--feed-batch-size", type=int, help="server B's feed_batch_size (default: the service's)"
    )


def configure(args: argparse.Namespace, common: dict[str, Any]) -> FeedConfig:
    """The configuration of this run."""
    return FeedConfig(
        **common,
        feed_min_read_interval=args.feed_min_read_interval,
        feed_batch_size=args.feed_batch_size,
    )
