"""One measurement: sample calls, warm-up, then the timed load with CPU and database accounting.

Warm-up is a separate load-generator run whose figures are discarded, so the
timed run starts on a warm server with the same connections shape. On a shared
machine a timed run that something else disturbed (see usage.py) is repeated,
after waiting for quiet, up to `attempts` times; the least disturbed one counts. Write calls
also read their database effect (rows inserted, versions bumped) before and
after the timed run: a success the generator counted without an effect is a
hidden failure. The effect is exact up to the calls still in flight when the
generator stopped (at most `concurrency`), which may commit after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

from bench.perf.calls import Effect, GrpcCall, HttpCall
from bench.perf.config import PerfConfig
from bench.perf.loadgen import LoadGenerator, LoadRun
from bench.perf.results import LABELS, Measurement
from bench.perf.sampling import GrpcSample, sample_grpc, sample_http
from bench.perf.usage import between, snapshot, wait_for_quiet
from bench.servers import ServerProcess

SETTLE = 0.5  # seconds for calls in flight when a generator stops to finish
Progress = Callable[[str], None]


class Runner:
    """Runs measurements with one configuration and load generator; keeps what they found."""

    def __init__(self, cfg: PerfConfig, generator: LoadGenerator, progress: Progress) -> None:
        self.cfg = cfg
        self.generator = generator
        self.progress = progress
        self.measurements: list[Measurement] = []
        self.samples: dict[str, GrpcSample] = {}

    async def grpc(
        self, server: ServerProcess, key: str, call: GrpcCall, check: bool = True
    ) -> None:
        """Measure a unary gRPC call (skipped unless the configuration wants `key`)."""
        if not self.cfg.wants(key):
            return
        await self._announce(key)
        sample = await sample_grpc(server.target, call, check)
        self.samples[key] = sample
        if self.cfg.warmup:
            await self.generator.grpc(server.target, call, self.cfg.warmup)
        sizes = None if call.effect else sample.frame_sizes

        async def load() -> LoadRun:
            return await self.generator.grpc(server.target, call, self.cfg.duration, sizes)

        await self._timed(server, key, load, call.effect, sample.describe(), sample.valid)

    async def http(self, server: ServerProcess, key: str, call: HttpCall) -> None:
        """Measure a REST call (skipped unless the configuration wants `key`)."""
        if not self.cfg.wants(key):
            return
        await self._announce(key)
        sample = await sample_http(server.url, call)
        if self.cfg.warmup:
            await self.generator.http(server.url, call, self.cfg.warmup)

        async def load() -> LoadRun:
            return await self.generator.http(server.url, call, self.cfg.duration)

        await self._timed(server, key, load, call.effect, sample.describe(), sample.valid)

    async def _announce(self, key: str) -> None:
        """Say what comes, after waiting for the machine to calm down (if configured)."""
        if self.cfg.quiet_wait:
            waited = await wait_for_quiet(self.cfg.quiet_wait)
            if waited >= self.cfg.quiet_wait:
                self.progress(f"Machine still busy after {waited:.0f} s; measuring anyway")
            elif waited:
                self.progress(f"Waited {waited:.0f} s for the machine to be idle")
        self.progress(
            f"{LABELS[key]}: sample calls, {self.cfg.warmup:g} s warm-up, "
            f"{self.cfg.duration:g} s measured"
        )

    async def _timed(
        self,
        server: ServerProcess,
        key: str,
        load: Callable[[], Awaitable[LoadRun]],
        effect: Effect | None,
        sample: str,
        sample_ok: bool,
    ) -> None:
        best = await self._attempt(server, key, load, effect, sample, sample_ok)
        for _ in range(self.cfg.attempts - 1):
            if not best.usage.disturbed:
                break
            self.progress(f"  disturbed (other {best.usage.other:.2f} cores): measuring again")
            await wait_for_quiet(self.cfg.quiet_wait)
            again = await self._attempt(server, key, load, effect, sample, sample_ok)
            best = min(best, again, key=lambda m: m.usage.other)
        self.measurements.append(best)

    async def _attempt(
        self,
        server: ServerProcess,
        key: str,
        load: Callable[[], Awaitable[LoadRun]],
        effect: Effect | None,
        sample: str,
        sample_ok: bool,
    ) -> Measurement:
        before_effect = await self._effect(effect)
        before = snapshot(server)
        run = await load()
        usage = between(before, snapshot(server))
        written = None
        if effect is not None:
            written = await self._effect(effect) - before_effect
            run = replace(run, hidden_failures=max(0, run.completed - written))
        return Measurement(key, run, usage, sample, sample_ok, written)

    async def _effect(self, effect: Effect | None) -> int:
        """The write counter after in-flight calls settled (0 for reads)."""
        if effect is None:
            return 0
        await asyncio.sleep(SETTLE)
        return await effect.read(self.cfg.dsn)
