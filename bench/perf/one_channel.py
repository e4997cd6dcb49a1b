"""Load on ONE grpc.aio channel: `--in-flight` concurrent callers in this process; JSON counts."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

CALL_TIMEOUT = 30.0  # a stuck call ends the run at most this long after the deadline


async def load(
    target: str, path: str, payloads: Sequence[bytes], in_flight: int, seconds: float, most: int
) -> dict[str, Any]:
    """`in_flight` callers, each calling `path` again as soon as its call ends, until `seconds`
    are up or `most` calls were made; outcomes by status and latency percentiles of the OK
    ones (from the call to its answer, so queueing in the client counts)."""
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    made = 0

    async def caller(method: Any, payload: bytes, deadline: float) -> None:
        nonlocal made
        while time.monotonic() < deadline and made < most:
            made += 1
            started = time.perf_counter()
            try:
                await method(payload, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                outcomes[error.code().name] += 1
                continue
            latencies.append(time.perf_counter() - started)
            outcomes["OK"] += 1

    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT)  # connected before the clock
        method = channel.unary_unary(path)  # bytes in, bytes out
        started = time.monotonic()
        deadline = started + seconds
        callers = (caller(method, payloads[n % len(payloads)], deadline) for n in range(in_flight))
        await asyncio.gather(*callers)
        elapsed = time.monotonic() - started
    latencies.sort()
    ok = outcomes.pop("OK", 0)
    return {
        "ok": ok,
        "errors": dict(outcomes),
        "seconds": elapsed,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
    }


def _percentile(ordered: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted seconds, in milliseconds (0 with no calls)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m bench.perf.one_channel`; prints one JSON object."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--path", required=True, help="/package.Service/Method")
    parser.add_argument("--in-flight", type=int, required=True, help="concurrent callers")
    parser.add_argument("--seconds", type=float, required=True, help="how long to start calls")
    parser.add_argument("--most", type=int, required=True, help="calls at the most")
    parser.add_argument("requests", nargs="+", type=Path, help="serialised request variants")
    args = parser.parse_args(argv)
    payloads = [request.read_bytes() for request in args.requests]
    result = asyncio.run(
        load(args.target, args.path, payloads, args.in_flight, args.seconds, args.most)
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
