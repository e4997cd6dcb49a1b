"""Reading a server's Prometheus /metrics the way a scraper does: over HTTP."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TIMEOUT = 30.0  # a scrape of a server under load may wait for the GIL


def _scrape(port: int) -> Samples:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 - loopback
        body = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


async def scrape_port(port: int) -> Samples:
    """Every sample /metrics on `port` serves now (urllib, on a thread: the loop keeps
    serving)."""
    return await asyncio.to_thread(_scrape, port)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def metric(port: int, name: str, **labels: str) -> float:
    """One sample's value as /metrics on `port` serves it now (0 if absent)."""
    return value(await scrape_port(port), name, **labels)
