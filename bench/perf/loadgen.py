"""The load generators, each process pinned: h2load (gRPC), wrk (REST), one grpc.aio channel."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.perf.calls import GrpcCall, HttpCall, HttpRequest
from bench.perf.config import ONE_CHANNEL_MAX_CALLS, PerfConfig

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
_H2LOAD_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s),")
_H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout"
)
_H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_H2LOAD_TRAFFIC = re.compile(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?\((\d+)\) data")
_WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m),")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class LoadRun:
    """What one load-generator run counted: `completed` is what the generator counts as success
    (h2load and wrk: HTTP 2xx/3xx; one channel: gRPC OK), `failed` the rest. `hidden_failures`
    are gRPC errors among `completed` that the bench found (no response message, or no
    database effect); None when not checked. `latency_ms` is (p50, p99) where measured."""

    generator: str
    completed: int
    failed: int
    seconds: float
    hidden_failures: int | None
    detail: str
    latency_ms: tuple[float, float] | None = None

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


@dataclass(frozen=True)
class H2loadReport:
    """The figures of one h2load process."""

    seconds: float
    succeeded: int
    failed: int  # failed + errored + timeout
    status_2xx: int
    status_other: int
    data_bytes: int


def parse_h2load(output: str) -> H2loadReport:
    """The report of an h2load run; ValueError if its summary is not there."""
    finished, requests = _H2LOAD_FINISHED.search(output), _H2LOAD_REQUESTS.search(output)
    status, traffic = _H2LOAD_STATUS.search(output), _H2LOAD_TRAFFIC.search(output)
    if not (finished and requests and status and traffic):
        raise ValueError(f"no h2load summary in:\n{output[-2000:]}")
    _, _, _, succeeded, failed, errored, timeout = map(int, requests.groups())
    s2, s3, s4, s5 = map(int, status.groups())
    return H2loadReport(
        seconds=float(finished.group(1)) * _UNIT[finished.group(2)],
        succeeded=succeeded,
        failed=failed + errored + timeout,
        status_2xx=s2,
        status_other=s3 + s4 + s5,
        data_bytes=int(traffic.group(3)),
    )


def grpc_failures(report: H2loadReport, response_frame_bytes: int) -> int:
    """Calls h2load counted as succeeded that carried no response message, for a call whose
    every response frame has `response_frame_bytes` bytes. h2load counts any 2xx/3xx HTTP
    status as success and never reads grpc-status, so a gRPC error (an HTTP 200 with
    grpc-status != 0) passes; but it carries no message, which the DATA bytes give away."""
    messages = round(report.data_bytes / response_frame_bytes)
    return max(0, report.succeeded - messages)


def parse_wrk(output: str) -> LoadRun:
    """What a wrk run counted: non-2xx/3xx responses and socket errors are the failures;
    ValueError if its summary is not there."""
    requests = _WRK_REQUESTS.search(output)
    if not requests:
        raise ValueError(f"no wrk summary in:\n{output[-2000:]}")
    non_2xx_found, sockets = _WRK_NON_2XX.search(output), _WRK_SOCKET.search(output)
    responses = int(requests.group(1))
    non_2xx = int(non_2xx_found.group(1)) if non_2xx_found else 0
    socket_errors = sum(map(int, sockets.groups())) if sockets else 0
    return LoadRun(
        generator="wrk",
        completed=responses - non_2xx,
        failed=non_2xx + socket_errors,
        seconds=float(requests.group(2)) * _UNIT[requests.group(3)],
        hidden_failures=None,
        detail=f"{responses:,} responses, {non_2xx:,} non-2xx/3xx, {socket_errors:,} socket errors",
    )


def wrk_script(requests: Sequence[HttpRequest]) -> str:
    """A wrk Lua script sending the variants in turn (JSON bodies)."""
    # A JSON string literal is a valid Lua string literal for the ASCII we send.
    entries = ",\n".join(
        f"  {{{json.dumps(r.method)}, {json.dumps(r.path)}, {json.dumps(r.body)}}}"
        for r in requests
    )
    return f"""-- Generated by bench.perf.loadgen: cycle through the request variants.
local requests = {{
{entries}
}}
local headers = {{["Content-Type"] = "application/json"}}
local i = 0

request = function()
  i = i % #requests + 1
  local r = requests[i]
  if r[3] == "" then
    return wrk.format(r[1], r[2])
  end
  return wrk.format(r[1], r[2], headers, r[3])
end
"""


class LoadGenerator:
    """Runs the generators with the configured load shape; their files go under `workdir`."""

    def __init__(self, cfg: PerfConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self._names = itertools.count(1)

    def _files(self, name: str, contents: Sequence[bytes]) -> list[Path]:
        number = next(self._names)
        paths = [self.workdir / f"{name}-{number}-{i}.bin" for i in range(len(contents))]
        for path, content in zip(paths, contents, strict=True):
            path.write_bytes(content)
        return paths

    async def grpc(
        self, target: str, call: GrpcCall, seconds: float, sizes: Sequence[int] | None = None
    ) -> LoadRun:
        """h2load: one process per connection, each posting its own request variant (a
        length-prefixed message) on `streams_per_connection` streams. With the `sizes` of each
        variant's response frame (fixed-size responses), gRPC errors hidden from h2load count."""
        frames = call.frames()
        bodies = self._files(
            call.method, [frames[i % len(frames)] for i in range(self.cfg.connections)]
        )
        headers = [arg for header in GRPC_HEADERS for arg in ("-H", header)]
        command = ["h2load", "-D", f"{max(1, round(seconds * 1000))}ms", "-c", "1", "-t", "1"]
        command += ["-m", str(self.cfg.streams_per_connection), *headers]
        url = f"http://{target}{call.path}"
        outputs = await asyncio.gather(*(self._run([*command, "-d", str(b), url]) for b in bodies))
        reports = [parse_h2load(output) for output in outputs]
        hidden = None
        if sizes is not None:
            hidden = sum(grpc_failures(r, sizes[i % len(sizes)]) for i, r in enumerate(reports))
        succeeded = sum(r.succeeded for r in reports)
        return LoadRun(
            generator="h2load",
            completed=succeeded,
            failed=sum(r.failed for r in reports),
            seconds=max(r.seconds for r in reports),
            hidden_failures=hidden,
            detail=f"{succeeded:,} succeeded, {sum(r.status_2xx for r in reports):,} 2xx, "
            f"{sum(r.status_other for r in reports):,} other statuses, "
            f"{sum(r.data_bytes for r in reports):,} data bytes ({len(reports)} processes)",
        )

    async def http(self, url: str, call: HttpCall, seconds: float) -> LoadRun:
        """wrk: one thread, `concurrency` keep-alive connections cycling through the variants."""
        script = self.workdir / f"{call.requests[0].method.lower()}-{next(self._names)}.lua"
        script.write_text(wrk_script(call.requests))
        connections, duration = str(self.cfg.concurrency), f"{max(1, round(seconds))}s"
        command = ["wrk", "-t", "1", "-c", connections, "-d", duration, "-s", str(script), url]
        return parse_wrk(await self._run(command))

    async def one_channel(
        self, target: str, call: GrpcCall, in_flight: int, seconds: float
    ) -> LoadRun:
        """One client process, one grpc.aio channel, `in_flight` concurrent callers; it sees
        each call's grpc-status itself, so no failure hides."""
        requests = self._files(call.method, [r.SerializeToString() for r in call.requests])
        args = ["--target", target, "--path", call.path, "--in-flight", str(in_flight)]
        args += ["--seconds", str(seconds), "--most", str(ONE_CHANNEL_MAX_CALLS)]
        command = [sys.executable, "-m", "bench.perf.one_channel", *args, *map(str, requests)]
        result = json.loads((await self._run(command)).strip().splitlines()[-1])
        errors = ", ".join(f"{code} {n:,}" for code, n in sorted(result["errors"].items()))
        latency = (result["p50_ms"], result["p99_ms"])
        return LoadRun(
            generator="grpc.aio, one channel",
            completed=result["ok"],
            failed=sum(result["errors"].values()),
            seconds=result["seconds"],
            hidden_failures=0,
            detail=f"{result['ok']:,} OK; errors: {errors or 'none'}; "
            f"p50 {latency[0]:,.1f} ms, p99 {latency[1]:,.1f} ms",
            latency_ms=latency,
        )

    async def _run(self, command: list[str]) -> str:
        process = await asyncio.create_subprocess_exec(
            *self.cfg.tools.pin(),
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
