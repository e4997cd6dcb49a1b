"""The Python load generator: the fallback for smoke runs where h2load or wrk are not installed.

It keeps the same number of requests in flight as the native tools, on the
same connections (one HTTP/2 connection per gRPC body file, `--streams` calls
on each; `--connections` HTTP/1.1 keep-alive connections for REST), and counts
every outcome itself: gRPC status codes and HTTP statuses. It is much slower
than h2load/wrk, so its figures are only good for smoke runs. Prints one JSON
object: {"completed": n, "ok": n, "errors": {status: n}, "seconds": s}.

    python -m bench.perf.pyload grpc --target HOST:PORT --path /pkg.Svc/Method \
        --streams 4 --seconds 1 body.bin [body.bin ...]
    python -m bench.perf.pyload http --url http://HOST:PORT --connections 64 \
        --seconds 1 requests.json
"""

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
from urllib.parse import urlsplit

import grpc

FRAME_HEADER = 5  # compressed flag + 4-byte length


async def grpc_load(
    target: str, path: str, bodies: Sequence[Path], streams: int, seconds: float
) -> Counter[str]:
    """Call `path` with each body on its own connection, `streams` at a time, until time is up."""
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in bodies
    ]
    try:
        workers = [
            _grpc_worker(channel.unary_unary(path), body.read_bytes()[FRAME_HEADER:], deadline)
            for channel, body in zip(channels, bodies, strict=True)
            for _ in range(streams)
        ]
        for counts in await asyncio.gather(*workers):
            outcomes.update(counts)
    finally:
        for channel in channels:
            await channel.close()
    return outcomes


async def _grpc_worker(call: Any, payload: bytes, deadline: float) -> Counter[str]:
    counts: Counter[str] = Counter()
    while time.monotonic() < deadline:
        try:
            await call(payload)
            counts["OK"] += 1
        except grpc.aio.AioRpcError as error:
            counts[error.code().name] += 1
    return counts


async def http_load(
    url: str, requests: Sequence[dict[str, str]], connections: int, seconds: float
) -> Counter[str]:
    """Send the requests in turn on `connections` keep-alive connections until time is up."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    deadline = time.monotonic() + seconds
    workers = [_http_worker(host, port, requests, n, deadline) for n in range(connections)]
    outcomes: Counter[str] = Counter()
    for counts in await asyncio.gather(*workers):
        outcomes.update(counts)
    return outcomes


async def _http_worker(
    host: str, port: int, requests: Sequence[dict[str, str]], first: int, deadline: float
) -> Counter[str]:
    counts: Counter[str] = Counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        number = first
        while time.monotonic() < deadline:
            request = requests[number % len(requests)]
            number += 1
            writer.write(_http_request(host, request))
            counts[await _read_status(reader)] += 1
    finally:
        writer.close()
    return counts


def _http_request(host: str, request: dict[str, str]) -> bytes:
    body = request["body"].encode()
    head = (
        f"{request['method']} {request['path']} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_status(reader: asyncio.StreamReader) -> str:
    """Read one response (Content-Length framed); its status code."""
    status = (await reader.readline()).split()[1].decode()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def summary(outcomes: Counter[str], seconds: float, ok: set[str]) -> dict[str, Any]:
    """The JSON the bench reads."""
    good = sum(count for key, count in outcomes.items() if key in ok)
    errors = {key: count for key, count in outcomes.items() if key not in ok}
    return {"completed": sum(outcomes.values()), "ok": good, "errors": errors, "seconds": seconds}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    protocols = parser.add_subparsers(dest="protocol", required=True)
    grpc_parser = protocols.add_parser("grpc")
    grpc_parser.add_argument("--target", required=True)
    grpc_parser.add_argument("--path", required=True)
    grpc_parser.add_argument("--streams", type=int, required=True)
    grpc_parser.add_argument("--seconds", type=float, required=True)
    grpc_parser.add_argument("bodies", nargs="+", type=Path)
    http_parser = protocols.add_parser("http")
    http_parser.add_argument("--url", required=True)
    http_parser.add_argument("--connections", type=int, required=True)
    http_parser.add_argument("--seconds", type=float, required=True)
    http_parser.add_argument("requests", type=Path)
    return parser


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    if args.protocol == "grpc":
        outcomes = await grpc_load(args.target, args.path, args.bodies, args.streams, args.seconds)
        return summary(outcomes, time.monotonic() - started, {"OK"})
    requests = json.loads(args.requests.read_text())
    outcomes = await http_load(args.url, requests, args.connections, args.seconds)
    return summary(outcomes, time.monotonic() - started, {"200", "201"})


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m bench.perf.pyload`."""
    result = asyncio.run(_run(_parser().parse_args(argv)))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
