"""The processes a feed bench run starts: two servers and the watcher clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVICE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Server:
    """A `python -m service serve` process."""

    process: asyncio.subprocess.Process
    address: str

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """Resident memory (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


@contextlib.asynccontextmanager
async def server(database_url: str, log: Path) -> AsyncIterator[Server]:
    """A server process on a free port until the block ends (SIGTERM)."""
    address = f"127.0.0.1:{_free_port()}"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "serve",
            "--database-url",
            database_url,
            "--address",
            address,
            "--log-level",
            "WARNING",
            cwd=ROOT,
            env=_env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=sink,
        )
        try:
            deadline = time.monotonic() + 90
            while not await _serving(address):
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start:\n" + log.read_text())
                await asyncio.sleep(0.1)
            yield Server(process, address)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


@dataclass
class WatcherClients:
    """Watcher client processes (bench/feed/watchers.py) and their result files."""

    processes: list[asyncio.subprocess.Process]
    outputs: list[Path]

    async def stop(self) -> list[dict[str, object]]:
        """Close their stdin (they stop and write their results); the results."""
        import json

        for process in self.processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in self.processes:
            await asyncio.wait_for(process.wait(), 60)
        return [json.loads(path.read_text()) for path in self.outputs]


async def start_watchers(
    address: str, project_id: int, streams: int, clients: int, sampled: int, workdir: Path
) -> WatcherClients:
    """`clients` processes sharing `streams` streams; returns once every stream is open."""
    processes, outputs = [], []
    for index in range(clients):
        count = streams // clients + (1 if index < streams % clients else 0)
        output = workdir / f"watchers-{project_id}-{index}.json"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.feed.watchers",
            address,
            str(project_id),
            str(count),
            str(min(sampled, count)),
            str(output),
            cwd=ROOT,
            env=_env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        outputs.append(output)
    for process in processes:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"a watcher client failed: {line!r}")
    return WatcherClients(processes, outputs)
