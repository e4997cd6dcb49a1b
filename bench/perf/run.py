"""The perf bench: unary RPC throughput against a transport ceiling, a hand-tuned server, REST."""

from __future__ import annotations

import tempfile
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from bench.core.database import reset_writes
from bench.core.run import say
from bench.core.servers import (
    ServerProcess,
    baseline_server,
    http_answering,
    running,
    service_server,
)
from bench.core.streams import alternate_streams
from bench.perf import calls, profile, roundtrips, tracing
from bench.perf.config import LABELS, ONE_CHANNEL, ONE_CHANNEL_SERVER_ARGS, PerfConfig
from bench.perf.loadgen import LoadGenerator
from bench.perf.measure import Runner, sample_grpc
from bench.perf.report import BlindSpot, PerfResults

PROFILE_OUTPUT = Path(__file__).resolve().parents[1] / "results" / "gettask-basic.pyspy.txt"


def rest_server(cfg: PerfConfig) -> AbstractAsyncContextManager[ServerProcess]:
    """The REST peer: FastAPI + SQLModel under uvicorn."""
    return running(
        "FastAPI peer",
        ("bench.perf.rest_app", "--database-url", cfg.url),
        ready=http_answering("/tasks/1"),
    )


async def measure(cfg: PerfConfig) -> PerfResults:
    """Every measurement, in order, on the seeded database (put back as seeded at the end)."""
    targets = await calls.pick_targets(cfg, cfg.connections)
    by_key = calls.calls_by_key(targets)
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as workdir:
        runner = Runner(cfg, LoadGenerator(cfg, Path(workdir)), by_key, say)
        await _ceilings(cfg, runner)
        blind, spied = await _service_reads(cfg, runner, Path(workdir))
        await _one_channel(cfg, runner)
        streams = None
        if cfg.wants("stream"):
            streams = await alternate_streams(cfg, cfg.stream_runs, cfg.batch_size, say)
        traced = None
        if cfg.wants("tracing"):
            traced = await tracing.measure(cfg, runner.generator, targets)
        await _writes(cfg, runner)
        statements = await _statement_counts(cfg, by_key)
        await reset_writes(cfg)
    ours, theirs = runner.samples.get("get_basic"), runner.samples.get("handtuned")
    return PerfResults(
        targets=targets,
        measurements=tuple(runner.measurements),
        streams=streams,
        tracing=traced,
        same_as_handtuned=None if not (ours and theirs) else ours.responses == theirs.responses,
        blind_spot=blind,
        profile=spied,
        statements=statements,
    )


async def _ceilings(cfg: PerfConfig, runner: Runner) -> None:
    """The transport ceiling, the hand-tuned server (asyncio, uvloop) and the REST GET."""
    if cfg.wants("constant"):
        async with running(
            "constant GetTask", ("bench.core.baseline_server", "--constant")
        ) as server:
            await runner.measure(server, "constant")
    for key, loop in (("handtuned", "asyncio"), ("handtuned_uvloop", "uvloop")):
        if cfg.wants(key):
            async with baseline_server(cfg, "--loop", loop, name=f"hand-tuned ({loop})") as server:
                await runner.measure(server, key)
    if cfg.wants("rest_get"):
        async with rest_server(cfg) as server:
            await runner.measure(server, "rest_get")


async def _service_reads(
    cfg: PerfConfig, runner: Runner, workdir: Path
) -> tuple[BlindSpot | None, profile.Profile | None]:
    """TaskService's reads on one worker (with the h2load check and the profile), then
    GetTask on --workers 2."""
    blind = spied = None
    if any(cfg.wants(key) for key in ("get_basic", "get_full", "list", "blind", "profile")):
        async with service_server(cfg) as server:
            await runner.measure(server, "get_basic", "get_full", "list")
            if cfg.wants("blind"):
                blind = await _blind_spot(runner, server)
            if cfg.profile_seconds and cfg.wants("profile"):
                # A smoke run's profile stays out of bench/results/, where the full run's is.
                output = workdir / PROFILE_OUTPUT.name if cfg.smoke else PROFILE_OUTPUT
                spied = await _profile(cfg, runner, server, output)
    if cfg.wants("workers2"):
        async with service_server(cfg, "--workers", "2", name="TaskService --workers 2") as server:
            await runner.measure(server, "workers2")
    return blind, spied


async def _blind_spot(runner: Runner, server: ServerProcess) -> BlindSpot:
    """h2load on GetTask of a missing id for a second: what does it count?"""
    say("h2load and gRPC errors: GetTask of a missing id for 1 s")
    missing = calls.missing_task()
    sample = await sample_grpc(server.target, missing)
    found = await sample_grpc(server.target, runner.calls["get_basic"])
    run = await runner.generator.grpc(server.target, missing, 1.0, found.frame_sizes[:1])
    return BlindSpot(run, sample.describe())


async def _profile(
    cfg: PerfConfig, runner: Runner, server: ServerProcess, output: Path
) -> profile.Profile:
    """py-spy on the server while GetTask BASIC runs under the same load."""
    say(f"Profiling TaskService GetTask (BASIC) with py-spy for {cfg.profile_seconds:g} s")
    output.parent.mkdir(parents=True, exist_ok=True)
    basic = runner.calls["get_basic"]
    load = runner.generator.grpc(server.target, basic, cfg.profile_seconds + 2)
    return await profile.record(server.pid, cfg.profile_seconds, output, load)


async def _one_channel(cfg: PerfConfig, runner: Runner) -> None:
    """GetTask BASIC with many calls in flight on one grpc.aio channel, on a server whose
    HTTP/2 connections take them all at once."""
    if any(cfg.wants(key) for key in ONE_CHANNEL):
        name = f"TaskService {' '.join(ONE_CHANNEL_SERVER_ARGS)}"
        async with service_server(cfg, *ONE_CHANNEL_SERVER_ARGS, name=name) as server:
            await runner.measure(server, *ONE_CHANNEL)


async def _writes(cfg: PerfConfig, runner: Runner) -> None:
    """REST POST, CreateTask and UpdateTask (the database is put back as seeded later)."""
    if cfg.wants("rest_post"):
        async with rest_server(cfg) as server:
            await runner.measure(server, "rest_post")
    if cfg.wants("create") or cfg.wants("update"):
        async with service_server(cfg) as server:
            await runner.measure(server, "create", "update")


async def _statement_counts(
    cfg: PerfConfig, by_key: dict[str, calls.GrpcCall | calls.HttpCall]
) -> tuple[roundtrips.StatementCount, ...]:
    """PostgreSQL statements per call of TaskService's and the REST peer's calls."""
    if not cfg.wants("statements"):
        return ()
    say("Counting PostgreSQL statements per call (in-process, warm)")
    service = {LABELS[k]: by_key[k] for k in ("get_basic", "get_full", "list", "create", "update")}
    rest = {LABELS[k]: by_key[k] for k in ("rest_get", "rest_post")}
    found = await roundtrips.count_service(cfg.url, service)
    return (*found, *await roundtrips.count_rest(cfg.url, rest))
