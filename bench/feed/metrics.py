"""Server B's feed counters, scraped from its Prometheus /metrics: reads of the change feed,
events handed to watchers, and WatchTasks messages sent."""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import dataclass

# Counter series -> FeedCounters field; a series with labels must carry every label given.
SERIES = {
    "taskservice_feed_reads_total": ("reads", ()),
    "taskservice_feed_events_delivered_total": ("events", ()),
    "grpc_server_msg_sent_total": ("messages", ('grpc_method="WatchTasks"',)),
}


@dataclass(frozen=True)
class FeedCounters:
    """The counters at one moment (or, subtracted, between two)."""

    reads: float = 0.0
    events: float = 0.0
    messages: float = 0.0

    def __sub__(self, other: FeedCounters) -> FeedCounters:
        return FeedCounters(
            self.reads - other.reads, self.events - other.events, self.messages - other.messages
        )


def parse(text: str) -> FeedCounters:
    """The counters of a /metrics page (series summed over their other labels)."""
    found = dict.fromkeys(("reads", "events", "messages"), 0.0)
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        if name in SERIES:
            field, wanted = SERIES[name]
            if all(label in labels for label in wanted):
                found[field] += float(value)
    return FeedCounters(**found)


async def scrape(port: int) -> FeedCounters:
    """The counters now."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as page:
            return str(page.read().decode())

    return parse(await asyncio.to_thread(get))
