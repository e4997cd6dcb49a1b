"""One measurement: sample calls, warm-up, then the timed load with CPU and database accounting."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import grpc

from bench.core.servers import ServerProcess
from bench.perf.calls import FRAME_HEADER, Effect, GrpcCall, HttpCall
from bench.perf.config import LABELS, ONE_CHANNEL, PerfConfig
from bench.perf.loadgen import LoadGenerator, LoadRun
from bench.perf.report import Measurement
from bench.perf.usage import between, snapshot, wait_for_quiet

SETTLE = 0.5  # seconds for calls in flight when a generator stops to finish
SAMPLE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Sample:
    """How each request variant was answered when sent once by a Python client."""

    codes: tuple[str, ...]  # "OK" (gRPC) or "2xx" (HTTP) for success, else the status
    responses: tuple[bytes, ...]  # gRPC response messages
    valid: bool  # every answer a success and right for its request

    @property
    def frame_sizes(self) -> tuple[int, ...]:
        """Bytes of each response as a gRPC frame on the wire (DATA payload)."""
        return tuple(FRAME_HEADER + len(response) for response in self.responses)

    def describe(self) -> str:
        """e.g. `16/16 OK`, `16/16 2xx` or `0/1 OK (NOT_FOUND 1)`."""
        success = "2xx" if "2xx" in self.codes else "OK"
        others = sorted({code for code in self.codes if code != success})
        tail = ", ".join(f"{code} {self.codes.count(code)}" for code in others)
        good = f"{self.codes.count(success)}/{len(self.codes)} {success}"
        return good + (f" ({tail})" if tail else "")


async def sample_grpc(target: str, call: GrpcCall) -> Sample:
    """Send every variant once and check each answer. The bytes are those h2load posts, and
    the status is read from the trailers as a real client sees it."""
    codes, responses = [], []
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.unary_unary(call.path)  # bytes in, bytes out
        for request in call.requests:
            try:
                responses.append(await method(request.SerializeToString(), timeout=SAMPLE_TIMEOUT))
                codes.append("OK")
            except grpc.aio.AioRpcError as error:
                responses.append(b"")
                codes.append(error.code().name)
    valid = all(code == "OK" for code in codes) and all(
        call.check(request, call.response_type.FromString(response))
        for request, response in zip(call.requests, responses, strict=True)
    )
    return Sample(tuple(codes), tuple(responses), valid)


async def sample_http(base_url: str, call: HttpCall) -> Sample:
    """Send every variant once and check each JSON answer."""
    answers = [await asyncio.to_thread(request.send, base_url) for request in call.requests]
    codes = tuple("2xx" if 200 <= status < 300 else str(status) for status, _ in answers)
    valid = all(
        code == "2xx" and body is not None and call.check(request, body)
        for request, code, (_, body) in zip(call.requests, codes, answers, strict=True)
    )
    return Sample(codes, (), valid)


@dataclass(frozen=True)
class Job:
    """A call to load on a server, how to load it for some seconds, and its sample calls."""

    server: ServerProcess
    key: str
    load: Callable[[float], Awaitable[LoadRun]]
    effect: Effect | None
    sample: Sample


class Runner:
    """Runs measurements with one configuration, load generator and set of calls (by key);
    keeps what they found."""

    def __init__(
        self,
        cfg: PerfConfig,
        generator: LoadGenerator,
        calls: dict[str, GrpcCall | HttpCall],
        progress: Callable[[str], None],
    ) -> None:
        self.cfg = cfg
        self.generator = generator
        self.calls = calls
        self.progress = progress
        self.measurements: list[Measurement] = []
        self.samples: dict[str, Sample] = {}

    async def measure(self, server: ServerProcess, *keys: str) -> None:
        """Measure each call of `keys` the configuration wants, on `server`: gRPC with h2load
        (or, for the ONE_CHANNEL keys, on one grpc.aio channel), REST with wrk."""
        for key in (key for key in keys if self.cfg.wants(key)):
            await self._announce(key)
            call = self.calls[key]
            if isinstance(call, HttpCall):
                sample = await sample_http(server.url, call)
                load = functools.partial(self.generator.http, server.url, call)
            else:
                sample = await sample_grpc(server.target, call)
                # Writes are checked in the database; reads by their fixed response sizes.
                sizes = None if call.effect else sample.frame_sizes
                load = functools.partial(self.generator.grpc, server.target, call, sizes=sizes)
                if key in ONE_CHANNEL:
                    flight = ONE_CHANNEL[key]
                    load = functools.partial(
                        self.generator.one_channel, server.target, call, flight
                    )
            self.samples[key] = sample
            await self._measure(Job(server, key, load, call.effect, sample))

    async def _announce(self, key: str) -> None:
        """Say what comes, after waiting for the machine to calm down (if configured)."""
        if self.cfg.quiet_wait:
            waited = await wait_for_quiet(self.cfg.quiet_wait)
            if waited:
                busy = "; still busy, measuring anyway" if waited >= self.cfg.quiet_wait else ""
                self.progress(f"Waited {waited:.0f} s for the machine to be idle{busy}")
        self.progress(
            f"{LABELS[key]}: sample calls, {self.cfg.warmup:g} s warm-up, "
            f"{self.cfg.duration:g} s measured"
        )

    async def _measure(self, job: Job) -> None:
        """Warm-up (figures dropped), then the timed run; one that something else disturbed is
        repeated after waiting for quiet, up to `attempts` times, and the least disturbed counts."""
        if self.cfg.warmup:
            await job.load(self.cfg.warmup)
        best = await self._attempt(job)
        for _ in range(self.cfg.attempts - 1):
            if not best.usage.disturbed:
                break
            self.progress(f"  disturbed (other {best.usage.other:.2f} cores): measuring again")
            await wait_for_quiet(self.cfg.quiet_wait)
            best = min(best, await self._attempt(job), key=lambda m: m.usage.other)
        self.measurements.append(best)

    async def _attempt(self, job: Job) -> Measurement:
        """One timed run. A write the generator counted without a database effect is a hidden
        failure (exact up to the calls in flight when it stopped, which may commit after)."""
        before_effect = await self._effect(job.effect)
        before = snapshot(job.server)
        run = await job.load(self.cfg.duration)
        usage = between(before, snapshot(job.server))
        written = None
        if job.effect is not None:
            written = await self._effect(job.effect) - before_effect
            run = replace(run, hidden_failures=max(0, run.completed - written))
        return Measurement(job.key, run, usage, job.sample.describe(), job.sample.valid, written)

    async def _effect(self, effect: Effect | None) -> int:
        """The write counter after in-flight calls settled (0 for reads)."""
        if effect is None:
            return 0
        await asyncio.sleep(SETTLE)
        return await effect.read(self.cfg.dsn)
