"""Server processes for tests: `python -m service serve` in a child, on a free port."""

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

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0  # a fresh interpreter imports grpc, SQLAlchemy and the protos


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    """The test's environment without TASKSERVICE_* settings (the flags say it all)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVICE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServiceProcess:
    """A running server process."""

    process: asyncio.subprocess.Process
    address: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident memory of the process (VmRSS), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
async def service_process(
    database_url: str, log: Path, *flags: str
) -> AsyncIterator[ServiceProcess]:
    """`python -m service serve` on a free port until the block ends (then SIGTERM)."""
    address = f"127.0.0.1:{free_port()}"
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
            *flags,
            cwd=ROOT,
            env=child_env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=sink,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not await _serving(address):
                assert process.returncode is None, "the server exited:\n" + log.read_text()
                assert time.monotonic() < deadline, "the server did not start:\n" + log.read_text()
                await asyncio.sleep(0.1)
            yield ServiceProcess(process, address, log)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()
