"""Running the load generators: the same request shape for h2load, wrk and the Python client.

gRPC: one process per request body (h2load posts one body file), each with one
HTTP/2 connection and `concurrency / connections` concurrent streams. REST: one
wrk thread with `concurrency` keep-alive connections cycling through the
variants. Every generator process is pinned with the Tools' taskset prefix.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.perf import h2load, wrk
from bench.perf.calls import GrpcCall, HttpCall
from bench.perf.tools import Tools


@dataclass(frozen=True)
class LoadRun:
    """What one load-generator run counted.

    `completed` is what the generator counts as success (h2load: 2xx/3xx, wrk:
    2xx/3xx, Python: gRPC OK / HTTP 200-201) and `failed` the rest. For gRPC
    under h2load, `hidden_failures` are gRPC errors among `completed` that the
    bench found (no response message, or no database effect); None when not
    checked, 0 for the Python client, which sees grpc-status itself.
    """

    generator: str
    completed: int
    failed: int
    seconds: float
    hidden_failures: int | None
    detail: str

    @property
    def ok(self) -> int:
        """Calls that really succeeded."""
        return self.completed - (self.hidden_failures or 0)

    @property
    def errors(self) -> int:
        """Every failure known: the generator's and the hidden ones."""
        return self.failed + (self.hidden_failures or 0)

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return self.ok / self.seconds


class LoadGenerator:
    """Runs the configured generators with a fixed load shape, files under `workdir`."""

    def __init__(self, tools: Tools, workdir: Path, concurrency: int, connections: int) -> None:
        self.tools = tools
        self.workdir = workdir
        self.concurrency = concurrency
        self.connections = connections
        self._names = itertools.count(1)

    @property
    def streams(self) -> int:
        """Concurrent streams per HTTP/2 connection."""
        return self.concurrency // self.connections

    def body_files(self, call: GrpcCall) -> list[Path]:
        """One gRPC body file per connection, cycling through the call's request variants."""
        frames = call.frames()
        number = next(self._names)
        paths = []
        for index in range(self.connections):
            path = self.workdir / f"{call.method}-{number}-{index}.bin"
            path.write_bytes(frames[index % len(frames)])
            paths.append(path)
        return paths

    async def grpc(
        self,
        target: str,
        call: GrpcCall,
        seconds: float,
        frame_sizes: Sequence[int] | None = None,
    ) -> LoadRun:
        """Load `call` for `seconds`; with the response frame size of each request variant
        (fixed-size responses), gRPC errors hidden from h2load are counted too."""
        bodies = self.body_files(call)
        if self.tools.grpc == "python":
            args = ["grpc", "--target", target, "--path", call.path]
            args += ["--streams", str(self.streams), "--seconds", str(seconds)]
            return _python_run(await self._python(args + [str(b) for b in bodies]))
        url = f"http://{target}{call.path}"
        outputs = await asyncio.gather(
            *(self._run(h2load.command(url, body, self.streams, seconds)) for body in bodies)
        )
        reports = [h2load.parse(output) for output in outputs]
        sizes = (
            None
            if frame_sizes is None
            else [frame_sizes[i % len(frame_sizes)] for i in range(len(reports))]
        )
        return _h2load_run(reports, sizes)

    async def http(self, url: str, call: HttpCall, seconds: float) -> LoadRun:
        """Load the REST `call` for `seconds`."""
        name = f"{call.requests[0].method.lower()}-{next(self._names)}"
        if self.tools.http == "python":
            spec = self.workdir / f"{name}.json"
            spec.write_text(json.dumps([asdict(request) for request in call.requests]))
            args = ["http", "--url", url, "--connections", str(self.concurrency)]
            return _python_run(await self._python([*args, "--seconds", str(seconds), str(spec)]))
        script = self.workdir / f"{name}.lua"
        script.write_text(wrk.lua_script(call.requests))
        report = wrk.parse(await self._run(wrk.command(url, script, self.concurrency, seconds)))
        return LoadRun(
            generator="wrk",
            completed=report.succeeded,
            failed=report.non_2xx + report.socket_errors,
            seconds=report.seconds,
            hidden_failures=None,
            detail=f"{report.requests:,} responses, {report.non_2xx:,} non-2xx/3xx, "
            f"{report.socket_errors:,} socket errors",
        )

    async def _python(self, args: list[str]) -> dict[str, Any]:
        output = await self._run([sys.executable, "-m", "bench.perf.pyload", *args])
        result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        return result

    async def _run(self, command: list[str]) -> str:
        process = await asyncio.create_subprocess_exec(
            *self.tools.pin(),
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited with {process.returncode}:\n"
                f"{stderr.decode(errors='replace')[-2000:]}"
            )
        return stdout.decode(errors="replace")


def _h2load_run(reports: list[h2load.H2loadReport], sizes: list[int] | None) -> LoadRun:
    hidden = (
        None
        if sizes is None
        else sum(h2load.grpc_failures(r, size) for r, size in zip(reports, sizes, strict=True))
    )
    succeeded = sum(r.succeeded for r in reports)
    data = sum(r.data_bytes for r in reports)
    return LoadRun(
        generator="h2load",
        completed=succeeded,
        failed=sum(r.failed for r in reports),
        seconds=max(r.seconds for r in reports),
        hidden_failures=hidden,
        detail=f"{succeeded:,} succeeded, {sum(r.status_2xx for r in reports):,} 2xx, "
        f"{sum(r.status_other for r in reports):,} other statuses, {data:,} data bytes "
        f"({len(reports)} processes)",
    )


def _python_run(result: dict[str, Any]) -> LoadRun:
    errors = result["errors"]
    shown = ", ".join(f"{code} {count:,}" for code, count in sorted(errors.items()))
    return LoadRun(
        generator="python",
        completed=result["ok"],
        failed=sum(errors.values()),
        seconds=result["seconds"],
        hidden_failures=0,
        detail=f"{result['completed']:,} calls; errors: {shown or 'none'}",
    )
