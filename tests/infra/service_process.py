"""TaskService as a separate process (`python -m service serve ...`), as deployed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_SERVING = re.compile(r"serving on .* \(port (\d+)\)")


def child_environment(**settings: str) -> dict[str, str]:
    """This environment without TASKSERVICE_* variables, plus `settings` (NAME=value)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVICE_")}
    env.update({f"TASKSERVICE_{name.upper()}": value for name, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServiceProcess:
    """A running server process: its port and what it logged."""

    port: int
    process: asyncio.subprocess.Process
    log: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        """host:port for a gRPC channel."""
        return f"127.0.0.1:{self.port}"

    def text(self) -> str:
        """Everything logged so far."""
        return "".join(self.log)


async def _wait_serving(port: int) -> None:
    """Wait for a health check answer: the process then also handles SIGTERM (its signal
    handlers are installed before its event loop answers any call)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=START_TIMEOUT, wait_for_ready=True
        )


@asynccontextmanager
async def service_process(*flags: str, **settings: str) -> AsyncIterator[ServiceProcess]:
    """Serve on an ephemeral loopback port with `flags` and TASKSERVICE_ `settings`;
    SIGTERM on exit, and the process must then exit 0."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "service", "serve", "--address", "127.0.0.1:0", *flags),
        cwd=ROOT,
        env=child_environment(**settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[str] = []

    async def port_from_log(stream: asyncio.StreamReader) -> int:
        while True:
            line = (await stream.readline()).decode()
            assert line, "the server process exited before serving:\n" + "".join(log)
            log.append(line)
            match = _SERVING.search(line)
            if match:
                return int(match.group(1))

    async def drain(stream: asyncio.StreamReader) -> None:  # a full pipe would stall it
        while line := await stream.readline():
            log.append(line.decode())

    try:
        try:
            port = await asyncio.wait_for(port_from_log(process.stderr), START_TIMEOUT)
        except TimeoutError:
            raise TimeoutError("the server did not start serving:\n" + "".join(log)) from None
        draining = asyncio.create_task(drain(process.stderr))
        await _wait_serving(port)
        yield ServiceProcess(port, process, log)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        await draining
        assert process.returncode == 0, "".join(log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
