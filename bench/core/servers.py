"""The servers under test, each in its own process: start, wait for health, read memory, stop."""

from __future__ import annotations

import asyncio
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

from bench.config import DatabaseConfig

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Memory:
    """A process's resident set: now (VmRSS) and its peak so far (VmHWM), in KiB."""

    rss_kib: int
    hwm_kib: int


def read_memory(pid: int) -> Memory:
    """VmRSS and VmHWM from /proc/<pid>/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return Memory(rss_kib=values["VmRSS"], hwm_kib=values["VmHWM"])


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


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants (a supervisor and its workers)."""
    total = 0.0
    for member in (pid, *descendants(pid)):
        try:
            total += cpu_seconds(member)
        except FileNotFoundError:  # exited in between
            pass
    return total


@dataclass
class ServerProcess:
    """A running server: its process, port and captured stderr."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    stderr: IO[bytes]

    @property
    def pid(self) -> int:
        """Process id (the Python interpreter itself, no shell in between)."""
        return self.process.pid

    @property
    def target(self) -> str:
        """gRPC target to dial."""
        return f"127.0.0.1:{self.port}"

    def memory(self) -> Memory:
        """Current and peak resident set size."""
        return read_memory(self.pid)

    def cpu_seconds(self) -> float:
        """CPU time used so far."""
        return cpu_seconds(self.pid)

    def tree_cpu_seconds(self) -> float:
        """CPU time used so far by the process and its workers."""
        return tree_cpu_seconds(self.pid)

    @property
    def url(self) -> str:
        """HTTP base URL, for the REST peer."""
        return f"http://{self.target}"

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


Readiness = Callable[["ServerProcess"], Awaitable[None]]


@asynccontextmanager
async def running(
    name: str, module_args: Sequence[str], ready: Readiness | None = None
) -> AsyncIterator[ServerProcess]:
    """Run `python -m <module_args> --address 127.0.0.1:<port>` until the block ends.

    The block starts once `ready` (default: the gRPC health check says SERVING) returns.
    """
    port = free_port()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", *module_args, "--address", f"127.0.0.1:{port}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        server = ServerProcess(name, process, port, stderr)
        try:
            await (ready or wait_healthy)(server)
            yield server
        finally:
            await stop(server)


async def wait_healthy(server: ServerProcess, timeout: float = READY_TIMEOUT) -> None:
    """Poll the gRPC health check until SERVING; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            _fail_if_exited(server)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{server.name} not healthy after {timeout:.0f} s:\n{server.stderr_tail()}")


async def wait_http(server: ServerProcess, path: str = "/", timeout: float = READY_TIMEOUT) -> None:
    """Poll an HTTP path until it answers at all (any status); fail early if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _fail_if_exited(server)
        if await asyncio.to_thread(_answers, server.url + path):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(
        f"{server.name} not answering after {timeout:.0f} s:\n{server.stderr_tail()}"
    )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # an HTTP status is an answer
    except OSError:
        return False


def _fail_if_exited(server: ServerProcess) -> None:
    if server.process.poll() is not None:
        raise RuntimeError(
            f"{server.name} exited with {server.process.returncode}:\n{server.stderr_tail()}"
        )


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
    cfg: DatabaseConfig, *extra_args: str, name: str = "TaskService"
) -> AbstractAsyncContextManager[ServerProcess]:
    """The real TaskService (`python -m service serve`) on the benchmark database."""
    args = ("service", "serve", "--database-url", cfg.url, *extra_args)
    return running(name, (*args, "--log-level", "WARNING", "--shutdown-grace", "1"))


def baseline_server(
    cfg: DatabaseConfig, *extra_args: str, name: str = "asyncpg keyset stream"
) -> AbstractAsyncContextManager[ServerProcess]:
    """The hand-written asyncpg server of bench/ (keyset StreamTasks, fetchrow GetTask)."""
    return running(name, ("bench.asyncpg_stream_server", "--dsn", cfg.dsn, *extra_args))


def constant_server() -> AbstractAsyncContextManager[ServerProcess]:
    """The transport ceiling: grpc.aio answering GetTask with a constant Task."""
    return running("constant GetTask", ("bench.perf.constant_server",))


def rest_server(cfg: DatabaseConfig) -> AbstractAsyncContextManager[ServerProcess]:
    """The REST peer: FastAPI + SQLModel under uvicorn."""
    return running(
        "FastAPI peer",
        ("bench.perf.rest_app", "--database-url", cfg.url),
        ready=lambda server: wait_http(server, "/tasks/1"),
    )
