"""TaskService as separate processes (`python -m service serve ...`), as deployed.

The one launcher tests (and bench/) use: flags and TASKSERVICE_ settings, an ephemeral
port or a fixed one kept across kill/start (a balancer's upstream), several workers,
readiness by health check, the log (a file) and the exit code.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.infra.processes import free_ports, stop_process

ROOT = Path(__file__).resolve().parents[2]
# A fresh interpreter imports grpc, SQLAlchemy and the stubs: slow on a busy machine.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
POLL = 0.1
_SERVING = re.compile(r"serving on .* \(port (\d+)\)")


def child_environment(**settings: str) -> dict[str, str]:
    """This environment without TASKSERVICE_* and OTEL_* variables (the server reads
    both), plus `settings` (NAME=value, as TASKSERVICE_NAME)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKSERVICE_", "OTEL_"))}
    env.update({f"TASKSERVICE_{name.upper()}": value for name, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def run_service(*args: str, **settings: str) -> tuple[int, str, str]:
    """`python -m service *args` to its end (a command, or a start that must fail):
    exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "service", *args),
        cwd=ROOT,
        env=child_environment(**settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


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
    same across kill() / start(). The process writes its stderr straight into a file
    (`log_path`, or a temporary one kept until close()), never into a pipe: a test that
    blocks its event loop for a while cannot stall the server on a full pipe.
    """

    flags: Sequence[str] = ()
    settings: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    workers: int = 1
    log_path: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # more variables, e.g. OTEL_*
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    starts: int = 0
    _temporary_log: bool = field(default=False, repr=False)
    _closed_log: str = field(default="", repr=False)

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
        if self.log_path is None or not self.log_path.exists():
            return self._closed_log
        return self.log_path.read_text(errors="replace")

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
        """Spawn the process; with `wait`, return once every worker logged that it serves
        and the health check says SERVING (its signal handlers are installed by then)."""
        assert not self.running, f"{self.address} is already running"
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="taskservice-", suffix=".log")
            os.close(handle)
            self.log_path, self._temporary_log = Path(name), True
            self.log_path.write_text(self._closed_log)
        self.starts += 1
        with self.log_path.open("ab") as sink:
            sink.write(f"--- start {self.starts} ---\n".encode())
            sink.flush()
            offset = sink.tell()
            self.process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "service", "serve"),
                *("--address", f"127.0.0.1:{self.port}", "--workers", str(self.workers)),
                *self.flags,
                cwd=ROOT,
                env={**child_environment(**self.settings), **self.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=sink,
            )
        if wait:
            await self._wait_serving(offset)

    async def _wait_serving(self, offset: int) -> None:
        """Wait for every worker's "serving on" line after `offset` of the log (the port,
        if the OS picked it), then for the health check to say SERVING."""
        assert self.log_path is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                ports = _SERVING.findall(log.read().decode(errors="replace"))
            if len(ports) >= self.workers:
                self.port = int(ports[-1])
                if await health_status(self.address) == health_pb2.HealthCheckResponse.SERVING:
                    return
            if not self.running:
                raise AssertionError(f"the server exited before serving:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not start serving:\n{self.log}")
            await asyncio.sleep(POLL)

    async def terminate(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `sig` (SIGTERM: drain and stop) and return the exit code."""
        assert self.process is not None, "never started"
        assert self.running, f"{self.address} is not running"
        self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(
                f"{self.address} ignored {sig} for {timeout}s:\n{self.log}"
            ) from None

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` and return at once (terminate() also waits for the exit)."""
        assert self.process is not None, "never started"
        assert self.running, f"{self.address} is not running"
        self.process.send_signal(sig)

    async def exited(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to end by itself (a start that must fail, or after
        send_signal()) and return its exit code."""
        assert self.process is not None, "never started"
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.address} still runs after {timeout}s:\n{self.log}"
            ) from None

    async def kill(self) -> None:
        """SIGKILL: the process dies at once, mid-call, as in a crash or an OOM kill."""
        assert self.process is not None, "never started"
        assert self.running, f"{self.address} is not running"
        self.process.kill()
        await self.process.wait()

    async def restart(self, *, wait: bool = True) -> None:
        """Kill the process if it still runs, then start it again (same port if fixed)."""
        if self.running:
            await self.kill()
        await self.start(wait=wait)

    async def close(self) -> None:
        """Stop the process however it is (SIGTERM, then SIGKILL): for teardown. A
        temporary log is removed; `log` still returns its text."""
        if self.process is not None and self.running:
            await stop_process(self.process, STOP_TIMEOUT)
        if self._temporary_log and self.log_path is not None:
            self._closed_log = self.log
            self.log_path.unlink(missing_ok=True)
            self.log_path = None


@asynccontextmanager
async def service_process(
    *flags: str,
    port: int = 0,
    workers: int = 1,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    **settings: str,
) -> AsyncIterator[ServiceProcess]:
    """Serve with `flags`, TASKSERVICE_ `settings` and more `env` variables (port 0: an
    ephemeral one) until the block ends; then SIGTERM, and a process still running must
    exit 0."""
    server = ServiceProcess(flags, settings, port, workers, log_path, dict(env or {}))
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
