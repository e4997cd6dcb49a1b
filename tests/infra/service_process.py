"""TaskService as separate processes (`python -m service serve ...`), as deployed.

The one launcher tests (and bench/) use: flags and TASKSERVICE_ settings, an ephemeral
port or a fixed one kept across kill/start (a balancer's upstream), several workers,
readiness by health check, the log in memory (and in a file if asked), the exit code.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.infra.processes import free_ports

ROOT = Path(__file__).resolve().parents[2]
# A fresh interpreter imports grpc, SQLAlchemy and the stubs: slow on a busy machine.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
POLL = 0.1
_SERVING = re.compile(r"serving on .* \(port (\d+)\)")


def child_environment(**settings: str) -> dict[str, str]:
    """This environment without TASKSERVICE_* variables, plus `settings` (NAME=value)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVICE_")}
    env.update({f"TASKSERVICE_{name.upper()}": value for name, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
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
class ServiceProcess:
    """One `python -m service serve` on 127.0.0.1, started (and restarted) by start().

    port 0: the OS picks one at each start (read from the log). A fixed port stays the
    same across kill() / start(). Everything the process writes to stderr is kept in
    `lines` (all starts) and, with `log_path`, appended to that file as it comes.
    """

    flags: Sequence[str] = ()
    settings: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    workers: int = 1
    log_path: Path | None = None
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    lines: list[str] = field(default_factory=list, repr=False)
    starts: int = 0
    _reader: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """host:port for a gRPC channel."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the last started process has not exited."""
        return self.process is not None and self.process.returncode is None

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: killed by that signal); None while it runs."""
        return None if self.process is None else self.process.returncode

    @property
    def pid(self) -> int:
        assert self.process is not None, "never started"
        return self.process.pid

    @property
    def log(self) -> str:
        """Everything the process wrote to stderr so far (every start)."""
        return "".join(self.lines)

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

    async def start(self, *, wait: bool = True) -> None:
        """Spawn the process; with `wait`, return once every worker serves and the health
        check says SERVING (its signal handlers are installed by then)."""
        assert not self.running, f"{self.address} is already running"
        await self._stop_reading()
        self.starts += 1
        self._record(f"--- start {self.starts} ---\n")
        serving = asyncio.Event()
        address = f"127.0.0.1:{self.port}"
        self.process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "service", "serve", "--address", address),
            *("--workers", str(self.workers), *self.flags),
            cwd=ROOT,
            env=child_environment(**self.settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stderr is not None
        self._reader = asyncio.create_task(self._read_log(self.process.stderr, serving))
        if wait:
            await self._wait_serving(serving)

    async def _read_log(self, stream: asyncio.StreamReader, serving: asyncio.Event) -> None:
        """Keep the log (a full pipe would stall the process) and count serving workers."""
        seen = 0
        while line := (await stream.readline()).decode(errors="replace"):
            self._record(line)
            match = _SERVING.search(line)
            if match:
                self.port = int(match.group(1))
                seen += 1
                if seen == self.workers:
                    serving.set()

    def _record(self, line: str) -> None:
        self.lines.append(line)
        if self.log_path is not None:
            with self.log_path.open("a") as sink:
                sink.write(line)

    async def _wait_serving(self, serving: asyncio.Event) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not serving.is_set():
            if not self.running:
                raise AssertionError(f"the server exited before serving:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not start serving:\n{self.log}")
            with suppress(TimeoutError):
                await asyncio.wait_for(serving.wait(), POLL)
        while await health_status(self.address) != health_pb2.HealthCheckResponse.SERVING:
            if not self.running:
                raise AssertionError(f"{self.address} exited before serving:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.address} not SERVING:\n{self.log}")
            await asyncio.sleep(POLL)

    async def _stop_reading(self) -> None:
        """Wait for the log reader of an exited process to reach the end of its output."""
        if self._reader is not None:
            with suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._reader, STOP_TIMEOUT)
            self._reader = None

    async def terminate(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `sig` (SIGTERM: drain and stop) and return the exit code, its log complete."""
        assert self.process is not None, "never started"
        assert self.running, f"{self.address} is not running"
        self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(
                f"{self.address} ignored {sig} for {timeout}s:\n{self.log}"
            ) from None
        await self._stop_reading()
        return code

    async def kill(self) -> None:
        """SIGKILL: the process dies at once, mid-call, as in a crash or an OOM kill."""
        assert self.process is not None, "never started"
        assert self.running, f"{self.address} is not running"
        self.process.kill()
        await self.process.wait()
        await self._stop_reading()

    async def restart(self, *, wait: bool = True) -> None:
        """Kill the process if it still runs, then start it again (same port if fixed)."""
        if self.running:
            await self.kill()
        await self.start(wait=wait)

    async def close(self) -> None:
        """Stop the process however it is (SIGTERM, then SIGKILL): for teardown."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._stop_reading()


@asynccontextmanager
async def service_process(
    *flags: str,
    port: int = 0,
    workers: int = 1,
    log_path: Path | None = None,
    **settings: str,
) -> AsyncIterator[ServiceProcess]:
    """Serve with `flags` and TASKSERVICE_ `settings` (port 0: an ephemeral one) until the
    block ends; then SIGTERM, and a process still running must exit 0."""
    server = ServiceProcess(flags, settings, port, workers, log_path)
    try:
        await server.start()
        yield server
        if server.running:
            code = await server.terminate()
            assert code == 0, f"exit code {code} after SIGTERM:\n{server.log}"
    finally:
        await server.close()


@asynccontextmanager
async def service_processes(
    count: int, *flags: str, directory: Path | None = None, **settings: str
) -> AsyncIterator[list[ServiceProcess]]:
    """`count` processes with the same flags, each on its own fixed port (kept across
    restarts), started together and serving; stopped on exit (logs in `directory`).

    They share one database: migrate it first (--migrate is safe for one process only).
    """
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    servers = [
        ServiceProcess(
            flags,
            settings,
            port,
            log_path=None if directory is None else directory / f"replica-{index}.log",
        )
        for index, port in enumerate(free_ports(count))
    ]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        yield servers
    finally:
        await asyncio.gather(*(server.close() for server in servers))
