"""TaskService as separate processes (`python -m service serve`), to start, kill and restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.infra.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
# A fresh interpreter imports grpc, SQLAlchemy and the stubs: slow on a busy machine.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
POLL = 0.1


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: ours without TASKSERVICE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVICE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def health_status(address: str, timeout: float = 2.0) -> int | grpc.StatusCode:
    """The overall health a fresh connection to `address` sees, or its call's error code."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            code: grpc.StatusCode = error.code()
            return code
    status: int = response.status
    return status


@dataclass
class ServerProcess:
    """One `taskservice serve` process on a fixed loopback port, its log in `log_path`.

    The port stays the same across kill() / start(), as a balancer's upstream list needs.
    """

    database_url: str
    port: int
    log_path: Path
    args: Sequence[str] = ()  # more flags, e.g. ("--page-token-secret", "...")
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        assert self.process is not None, "never started"
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, *, wait: bool = True) -> None:
        """Spawn the process; with `wait`, return once its health check says SERVING."""
        assert not self.running, f"{self.address} is already running"
        self.starts += 1
        with self.log_path.open("ab") as sink:
            sink.write(f"--- start {self.starts} ---\n".encode())
            sink.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service",
                "serve",
                "--address",
                self.address,
                "--database-url",
                self.database_url,
                *self.args,
                cwd=ROOT,
                env=child_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=sink,
            )
        if wait:
            await self.wait_until_serving()

    async def wait_until_serving(self, timeout: float = START_TIMEOUT) -> None:
        """Poll the health service until SERVING; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise AssertionError(f"{self.address} exited before serving:\n{self.log()}")
            if await health_status(self.address) == health_pb2.HealthCheckResponse.SERVING:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.address} not serving after {timeout}s:\n{self.log()}")
            await asyncio.sleep(POLL)

    async def kill(self) -> None:
        """SIGKILL: the process dies at once, mid-call, as in a crash or an OOM kill."""
        assert self.process is not None, f"{self.address} was never started"
        assert self.running, f"{self.address} is not running"
        self.process.kill()
        await self.process.wait()

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait for the exit code (the process drains and stops)."""
        assert self.process is not None, f"{self.address} was never started"
        assert self.running, f"{self.address} is not running"
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"{self.address} ignored SIGTERM for {timeout}s") from None

    async def restart(self, *, wait: bool = True) -> None:
        """Kill the process if it still runs, then start it again on the same port."""
        if self.running:
            await self.kill()
        await self.start(wait=wait)

    async def close(self) -> None:
        """Stop the process however it is (SIGTERM, then SIGKILL): for teardown."""
        if self.process is None or not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def server_processes(
    count: int, database_url: str, directory: Path, *, args: Sequence[str] = ()
) -> AsyncIterator[list[ServerProcess]]:
    """`count` replicas on one database, started together and serving; stopped on exit.

    The database must be migrated already (or pass "--migrate" in `args`, which is safe
    for one replica at a time only).
    """
    directory.mkdir(parents=True, exist_ok=True)
    replicas = [
        ServerProcess(database_url, port, directory / f"replica-{index}.log", args)
        for index, port in enumerate(free_ports(count))
    ]
    try:
        await asyncio.gather(*(replica.start() for replica in replicas))
        yield replicas
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))
