"""Load for the scale-out bench: unary calls at a fixed number in flight, counted by the server.

h2load posts one request body over and over; it cannot see gRPC statuses, so every
figure is read from the server's own Prometheus counters (`grpc_server_handled_total` by
method and code) before and after the run.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families

from bench.perf.calls import grpc_frame
from bench.perf.loadgen import GRPC_HEADERS

SERVICE = "taskmanager.v1.TaskService"


@dataclass(frozen=True)
class Call:
    """One unary method, the request it sends, and metadata (e.g. a consistency token)."""

    method: str  # GetTask
    request: Message
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        return f"/{SERVICE}/{self.method}"


@dataclass(frozen=True)
class Throughput:
    """Completed calls per second, and how many ended with another status than OK."""

    per_second: float
    ok: int
    failed: Counter[str]


def handled(metrics_port: int, method: str) -> Counter[str]:
    """The server's completed calls of `method` so far, by gRPC code."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "grpc_server_handled":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("grpc_method") == method:
                counts[sample.labels["grpc_code"]] += int(sample.value)
    return counts


async def measure_calls(
    address: str, metrics_port: int, call: Call, seconds: float, in_flight: int
) -> Throughput:
    """Run `call` for `seconds` with `in_flight` calls outstanding; the server's count."""
    before = await asyncio.to_thread(handled, metrics_port, call.method)
    started = time.monotonic()
    await asyncio.to_thread(_h2load, address, call, seconds, in_flight)
    elapsed = time.monotonic() - started
    after = await asyncio.to_thread(handled, metrics_port, call.method)
    done = after - before
    ok = done.pop("OK", 0)
    # The load generator stops with calls in flight: the server sees those cancelled.
    cancelled = [code for code in done if code.upper().startswith("CANCEL")]
    if sum(done[code] for code in cancelled) <= in_flight:
        for code in cancelled:
            del done[code]
    return Throughput(ok / elapsed, ok, done)


def _h2load(address: str, call: Call, seconds: float, in_flight: int) -> None:
    payload = call.request.SerializeToString()
    connections = 4
    with tempfile.TemporaryDirectory(prefix="taskservice-scaleout-") as directory:
        body = Path(directory) / "body.bin"
        body.write_bytes(grpc_frame(payload))
        headers = [*GRPC_HEADERS, *(f"{key}: {value}" for key, value in call.metadata)]
        subprocess.run(  # noqa: S603 - fixed tool, loopback target
            [
                "h2load",
                *("-D", f"{max(1, round(seconds * 1000))}ms"),
                *("-c", str(connections), "-m", str(max(1, in_flight // connections))),
                *("-t", "1", "-d", str(body)),
                *(arg for header in headers for arg in ("-H", header)),
                f"http://{address}{call.path}",
            ],
            check=True,
            capture_output=True,
            timeout=seconds + 60,
        )
