"""The perf bench: `python -m bench perf [--smoke] [--keep] [--only ...] [...]`.

Seeds (or reuses) its database, then in one run measures the transport and
hand-tuned ceilings, the REST peer and TaskService at a fixed number of
requests in flight, the StreamTasks stream against the asyncpg baseline, and
--workers 2; profiles GetTask with py-spy; prints the table and, on a full
run, rewrites its section of bench/README.md. Exit status 0 unless a
correctness check failed (missed targets are reported, not fatal); 2 for a bad
command line or a missing tool.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from bench.cli import (
    add_database_options,
    add_size_options,
    database_options,
    resolve_sizes,
    say,
)
from bench.database import drop_database, prepare_database, reset_writes
from bench.machine import describe_machine
from bench.perf import calls, profile, roundtrips
from bench.perf.config import GENERATORS, PERF_DATABASE, PerfConfig
from bench.perf.loadgen import LoadGenerator
from bench.perf.measure import Runner
from bench.perf.readme import write_perf_readme
from bench.perf.report import console_report, failed_checks
from bench.perf.results import LABELS, BlindSpot, PerfResults
from bench.perf.sampling import sample_grpc
from bench.perf.tools import ToolError, Tools, has_uvloop, resolve_tools
from bench.readme import README
from bench.results import StreamRun
from bench.servers import (
    ServerProcess,
    baseline_server,
    constant_server,
    rest_server,
    service_server,
)
from bench.streaming import alternate_streams
from taskmanager.v1 import resources_pb2

# (full, smoke) defaults of the size options.
DEFAULTS = {
    "tasks": (100_000, 2_000),
    "projects": (100, 10),
    "workers": (200, 10),
    "duration": (10.0, 1.0),
    "warmup": (3.0, 0.5),
    "stream_runs": (2, 1),
    "profile_seconds": (10.0, 0.0),
    "quiet_wait": (120.0, 0.0),
    "attempts": (3, 1),
}
EXTRA_KEYS = ("stream", "blind", "profile", "statements")
PROFILE_OUTPUT = Path(__file__).resolve().parents[1] / "results" / "gettask-basic.pyspy.txt"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench perf", description=__doc__.splitlines()[0]
    )
    add_database_options(parser, PERF_DATABASE)
    add_size_options(parser, DEFAULTS)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--connections", type=int, default=16, help="gRPC connections")
    parser.add_argument("--batch-size", type=int, default=500, help="StreamTasks batch size")
    parser.add_argument(
        "--load-generator",
        choices=GENERATORS,
        help="native: h2load + wrk (default); python: the bench's client; "
        "auto: native where installed (default with --smoke)",
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get or pip install")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated measurements to run: " + ", ".join((*LABELS, *EXTRA_KEYS)),
    )
    return parser


def config_from(args: argparse.Namespace) -> PerfConfig:
    """Resolve smoke/full defaults into a configuration."""
    only = frozenset(key for key in args.only.split(",") if key)
    unknown = only - {*LABELS, *EXTRA_KEYS}
    if unknown:
        raise ValueError(f"--only: unknown measurement(s) {', '.join(sorted(unknown))}")
    return PerfConfig(
        **database_options(args, PERF_DATABASE, README),
        **resolve_sizes(args, DEFAULTS),
        concurrency=args.concurrency,
        connections=args.connections,
        batch_size=args.batch_size,
        generator=args.load_generator or ("auto" if args.smoke else "native"),
        install=not (args.no_install or args.smoke),
        only=only,
    )


async def run(cfg: PerfConfig, tools: Tools) -> PerfResults:
    """Every measurement, in order; the database is dropped at the end if asked."""
    try:
        say(f"Preparing database {cfg.database} ({cfg.tasks:,} tasks, {cfg.projects:,} projects)")
        seeding = await prepare_database(cfg)
        targets = await calls.pick_targets(cfg, cfg.connections)
        with tempfile.TemporaryDirectory(prefix="bench-perf-") as workdir:
            generator = LoadGenerator(tools, Path(workdir), cfg.concurrency, cfg.connections)
            runner = Runner(cfg, generator, say)
            await _ceilings(cfg, runner, targets)
            blind, spied = await _service_reads(cfg, runner, targets)
            streams: tuple[StreamRun, ...] = ()
            baselines: tuple[StreamRun, ...] = ()
            if cfg.wants("stream"):
                streams, baselines = await alternate_streams(
                    cfg, cfg.stream_runs, cfg.batch_size, say
                )
            await _writes(cfg, runner, targets)
            statements = await _statement_counts(cfg, targets)
            await reset_writes(cfg)
        machine = await describe_machine(cfg.dsn)
    finally:
        if cfg.drop_after:
            await drop_database(cfg)
    return PerfResults(
        cfg=cfg,
        machine=machine,
        seeding=seeding,
        tools=tools,
        rest_stack=rest_stack(),
        targets=targets,
        measurements=tuple(runner.measurements),
        streams=streams,
        baselines=baselines,
        same_as_handtuned=_same_bytes(runner),
        blind_spot=blind,
        profile=spied,
        statements=statements,
    )


def _basic(targets: calls.Targets) -> calls.GrpcCall:
    return calls.get_task(targets, resources_pb2.TASK_VIEW_BASIC)


async def _ceilings(cfg: PerfConfig, runner: Runner, targets: calls.Targets) -> None:
    """The transport ceiling, the hand-tuned server (asyncio, uvloop) and the REST GET."""
    if cfg.wants("constant"):
        async with constant_server() as server:
            await runner.grpc(server, "constant", _basic(targets), check=False)
    loops = [("handtuned", "asyncio")] + ([("handtuned_uvloop", "uvloop")] if has_uvloop() else [])
    for key, loop in loops:
        if cfg.wants(key):
            async with baseline_server(cfg, "--loop", loop, name=f"hand-tuned ({loop})") as server:
                await runner.grpc(server, key, _basic(targets))
    if cfg.wants("rest_get"):
        async with rest_server(cfg) as server:
            await runner.http(server, "rest_get", calls.rest_get(targets))


async def _service_reads(
    cfg: PerfConfig, runner: Runner, targets: calls.Targets
) -> tuple[BlindSpot | None, profile.Profile | None]:
    """TaskService's reads on one worker (with the h2load check and the profile), then
    GetTask on --workers 2."""
    blind = spied = None
    if any(cfg.wants(key) for key in ("get_basic", "get_full", "list", "blind", "profile")):
        async with service_server(cfg) as server:
            await runner.grpc(server, "get_basic", _basic(targets))
            await runner.grpc(
                server, "get_full", calls.get_task(targets, resources_pb2.TASK_VIEW_FULL)
            )
            await runner.grpc(server, "list", calls.list_tasks(targets))
            blind = await _blind_spot(cfg, runner, server, targets)
            spied = await _profile(cfg, runner, server, targets)
    if cfg.wants("workers2"):
        async with service_server(cfg, "--workers", "2", name="TaskService --workers 2") as server:
            await runner.grpc(server, "workers2", _basic(targets))
    return blind, spied


async def _blind_spot(
    cfg: PerfConfig, runner: Runner, server: ServerProcess, targets: calls.Targets
) -> BlindSpot | None:
    """h2load on GetTask of a missing id for a second: what does it count?"""
    if runner.generator.tools.grpc != "h2load" or not cfg.wants("blind"):
        return None
    say("h2load and gRPC errors: GetTask of a missing id for 1 s")
    missing = calls.missing_task()
    sample = await sample_grpc(server.target, missing, check=False)
    found = await sample_grpc(server.target, _basic(targets))
    run = await runner.generator.grpc(server.target, missing, 1.0, found.frame_sizes[:1])
    return BlindSpot(run, sample.describe())


async def _profile(
    cfg: PerfConfig, runner: Runner, server: ServerProcess, targets: calls.Targets
) -> profile.Profile | None:
    """py-spy on the server while GetTask BASIC runs under the same load."""
    if not cfg.profile_seconds or not cfg.wants("profile"):
        return None
    say(f"Profiling TaskService GetTask (BASIC) with py-spy for {cfg.profile_seconds:g} s")
    PROFILE_OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    load = runner.generator.grpc(server.target, _basic(targets), cfg.profile_seconds + 2)
    return await profile.record(server.pid, cfg.profile_seconds, PROFILE_OUTPUT, load)


async def _writes(cfg: PerfConfig, runner: Runner, targets: calls.Targets) -> None:
    """REST POST, CreateTask and UpdateTask (the database is put back as seeded later)."""
    if cfg.wants("rest_post"):
        async with rest_server(cfg) as server:
            await runner.http(server, "rest_post", calls.rest_post(targets))
    if cfg.wants("create") or cfg.wants("update"):
        async with service_server(cfg) as server:
            await runner.grpc(server, "create", calls.create_task(targets))
            await runner.grpc(server, "update", calls.update_task(targets))


async def _statement_counts(
    cfg: PerfConfig, targets: calls.Targets
) -> tuple[roundtrips.StatementCount, ...]:
    """PostgreSQL statements per call of TaskService's and the REST peer's calls."""
    if not cfg.wants("statements"):
        return ()
    say("Counting PostgreSQL statements per call (in-process, warm)")
    service = {
        LABELS["get_basic"]: _basic(targets),
        LABELS["get_full"]: calls.get_task(targets, resources_pb2.TASK_VIEW_FULL),
        LABELS["list"]: calls.list_tasks(targets),
        LABELS["create"]: calls.create_task(targets),
        LABELS["update"]: calls.update_task(targets),
    }
    rest = {
        LABELS["rest_get"]: calls.rest_get(targets),
        LABELS["rest_post"]: calls.rest_post(targets),
    }
    found = await roundtrips.count_service(cfg.url, service)
    return (*found, *await roundtrips.count_rest(cfg.url, rest))


def _same_bytes(runner: Runner) -> bool | None:
    ours, theirs = runner.samples.get("get_basic"), runner.samples.get("handtuned")
    if ours is None or theirs is None:
        return None
    return ours.responses == theirs.responses


def rest_stack() -> str:
    """FastAPI and uvicorn versions, and the loop and HTTP parser uvicorn picks by default."""
    loop = "uvloop" if has_uvloop() else "asyncio"
    http = "httptools" if _installed("httptools") else "h11"
    return (
        f"FastAPI {metadata.version('fastapi')}, uvicorn {metadata.version('uvicorn')} "
        f"(loop {loop}, HTTP {http}), SQLModel {metadata.version('sqlmodel')}, pool_pre_ping"
    )


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m bench perf`."""
    args = _parser().parse_args(argv)
    try:
        cfg = config_from(args)
        tools = resolve_tools(cfg, say)
    except (ValueError, ToolError) as error:
        sys.stderr.write(f"{error}\n")
        return 2
    # Handlers on the root logger keep Alembic from installing its INFO logging.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = asyncio.run(run(cfg, tools))
    say("\n" + console_report(results))
    if cfg.readme is not None:
        write_perf_readme(results, cfg.readme)
        say(f"\nWrote {cfg.readme}")
    return 1 if failed_checks(results) else 0
