"""The servers under test, each in its own process: start, wait until ready, read CPU and memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.core.config import DatabaseConfig

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Memory:
    """A process's resident set: now (VmRSS) and its peak so far (VmHWM), in KiB."""

    rss_kib: int
    hwm_kib: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


@dataclass
class ServerProcess:
    """A running server: its process (the interpreter itself), port and captured stderr."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    stderr: IO[bytes]

    @property
    def pid(self) -> int:
        """Process id."""
        return self.process.pid

    @property
    def target(self) -> str:
        """gRPC target to dial."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """HTTP base URL, for the REST peer."""
        return f"http://{self.target}"

    def memory(self) -> Memory:
        """VmRSS and VmHWM from /proc/<pid>/status."""
        values: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0])
        return Memory(rss_kib=values["VmRSS"], hwm_kib=values["VmHWM"])

    def cpu_seconds(self, tree: bool = False) -> float:
        """CPU time used so far; with `tree`, its live descendants' too (a supervisor's workers)."""
        total = 0.0
        for member in (self.pid, *(descendants(self.pid) if tree else ())):
            with contextlib.suppress(FileNotFoundError):  # exited in between
                total += cpu_seconds(member)
        return total

    def stderr_tail(self, limit: int = 4000) -> str:
        """The end of what the server wrote to stderr."""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-limit:]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def grpc_serving(server: ServerProcess) -> bool:
    """Whether the gRPC health check says SERVING."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        request = health_pb2.HealthCheckRequest()
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_answering(path: str) -> Callable[[ServerProcess], Awaitable[bool]]:
    """A probe: whether an HTTP GET of `path` gets an answer at all (any status)."""

    def answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    return lambda server: asyncio.to_thread(answers, server.url + path)


@asynccontextmanager
async def running(
    name: str,
    module_args: Sequence[str],
    ready: Callable[[ServerProcess], Awaitable[bool]] = grpc_serving,
    cwd: Path = ROOT,
) -> AsyncIterator[ServerProcess]:
    """Run `python -m <module_args> --address 127.0.0.1:<port>` in `cwd` (whose packages it
    imports first) until the block ends; the block starts once the `ready` probe says so
    (polled, failing early if the process dies)."""
    port = free_port()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", *module_args, "--address", f"127.0.0.1:{port}"],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        server = ServerProcess(name, process, port, stderr)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not await ready(server):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited: {process.returncode}\n{server.stderr_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready in time:\n{server.stderr_tail()}")
                await asyncio.sleep(0.1)
            yield server
        finally:
            await stop(server)


async def stop(server: ServerProcess) -> None:
    """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
    if server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(server.process.wait, STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.process.kill()
        await asyncio.to_thread(server.process.wait)


def service_server(
    cfg: DatabaseConfig,
    *extra_args: str,
    name: str = "TaskService",
    checkout: Path = ROOT,
    database_url: str | None = None,
) -> AbstractAsyncContextManager[ServerProcess]:
    """The real TaskService (`python -m service serve`, as in `checkout`) on the bench database
    (or on `database_url`, the same database reached another way)."""
    args = ("service", "serve", "--database-url", database_url or cfg.url, *extra_args)
    return running(name, (*args, "--log-level", "WARNING", "--shutdown-grace", "1"), cwd=checkout)


def baseline_server(
    cfg: DatabaseConfig, *extra_args: str, name: str = "asyncpg keyset stream"
) -> AbstractAsyncContextManager[ServerProcess]:
    """The hand-written asyncpg server (keyset StreamTasks, fetchrow GetTask)."""
    return running(name, ("bench.core.baseline_server", "--dsn", cfg.dsn, *extra_args))
