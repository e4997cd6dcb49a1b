"""Medians of repeated awaited calls, timed in turns so that load drift hits each alike."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from time import perf_counter

Call = Callable[[], Awaitable[object]]


async def medians_ms(*calls: Call, repeat: int, warmup: int = 3) -> list[float]:
    """The median wall time of each call, in milliseconds: `warmup` untimed rounds, then
    `repeat` timed rounds, each calling every call once in turn."""
    for _ in range(warmup):
        for call in calls:
            await call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeat):
        for call, timed in zip(calls, times, strict=True):
            started = perf_counter()
            await call()
            timed.append((perf_counter() - started) * 1000)
    return [statistics.median(timed) for timed in times]
