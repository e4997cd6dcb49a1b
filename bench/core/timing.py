"""Small timing helpers: medians of repeated awaited calls, interleaved to share drift."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from time import perf_counter

Call = Callable[[], Awaitable[object]]


async def elapsed_ms(call: Call) -> float:
    """Wall time of one awaited call, in milliseconds."""
    started = perf_counter()
    await call()
    return (perf_counter() - started) * 1000


async def median_ms(call: Call, repeat: int, warmup: int = 3) -> float:
    """Median of `repeat` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        await call()
    return statistics.median([await elapsed_ms(call) for _ in range(repeat)])


async def paired_medians(
    first: Call, second: Call, repeat: int, warmup: int = 3
) -> tuple[float, float]:
    """Medians of two calls timed alternately, so load drift hits both alike."""
    for _ in range(warmup):
        await first()
        await second()
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeat):
        a.append(await elapsed_ms(first))
        b.append(await elapsed_ms(second))
    return statistics.median(a), statistics.median(b)
