"""The server as a separate process (`python -m service serve`): a crash is seen as a crash."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0  # a fresh interpreter imports grpc, SQLAlchemy and the protos
EXIT_TIMEOUT = 60.0
# Fixed ports (several workers share one) come from this helper's own range.
PORT_RANGE = (23000, 23999)
_SERVING = re.compile(r"serving on .* \(port (\d+)\)")


def free_port() -> int:
    """A port of PORT_RANGE nothing listens on right now."""
    low, high = PORT_RANGE
    for port in random.sample(range(low, high + 1), high - low + 1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def child_env() -> dict[str, str]:
    """The test's environment without TASKSERVICE_* settings, output unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVICE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServerProcess:
    """A running `python -m service serve` and everything it logged so far."""

    process: asyncio.subprocess.Process
    port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        """host:port clients connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.process.returncode is None

    @property
    def log(self) -> str:
        """Everything the process wrote to stderr so far."""
        return "".join(self.lines)

    async def terminate(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` and return the exit code (negative: killed by a signal)."""
        self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), EXIT_TIMEOUT)
        except TimeoutError:
            raise AssertionError("the server did not exit:\n" + self.log) from None


@asynccontextmanager
async def server_process(
    database_url: str, *args: str, address: str = "127.0.0.1:0", workers: int = 1
) -> AsyncIterator[ServerProcess]:
    """Start the server with `args`; yield once every worker serves; kill it if the test
    leaves it running."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "service", "serve", "--database-url", database_url),
        *("--address", address, "--workers", str(workers), *args),
        cwd=ROOT,
        env=child_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    running = ServerProcess(process)
    serving = asyncio.Event()

    async def read_log(stream: asyncio.StreamReader) -> None:
        seen = 0
        while line := (await stream.readline()).decode():
            running.lines.append(line)
            match = _SERVING.search(line)
            if match:
                running.port = int(match.group(1))
                seen += 1
                if seen == workers:
                    serving.set()

    reader = asyncio.create_task(read_log(process.stderr))
    try:
        waiting = asyncio.ensure_future(serving.wait())
        await asyncio.wait(
            {waiting, reader}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        waiting.cancel()
        assert serving.is_set(), "the server did not start:\n" + running.log
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        with suppress(asyncio.CancelledError):
            await asyncio.wait_for(reader, EXIT_TIMEOUT)
