"""The perf bench's configuration: what it measures, the load shape, durations, and its tools."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.core.config import DatabaseConfig, SetupError, data_sizes
from bench.core.run import say
from bench.perf.profile import py_spy

DATABASE = "taskservice_perf"
SIZES = {
    **data_sizes(tasks=100_000, projects=100),
    "duration": (10.0, 1.0),
    "warmup": (3.0, 0.5),
    "stream_runs": (2, 1),
    "profile_seconds": (10.0, 1.0),
    "quiet_wait": (120.0, 0.0),
    "attempts": (3, 1),
    "tracing_rounds": (5, 1),
}
# The calls in flight on ONE grpc.aio channel, by measurement key; the server for those rows
# runs with room for all of them on one connection.
ONE_CHANNEL = {"channel_64": 64, "channel_1000": 1_000}
ONE_CHANNEL_SERVER_ARGS = ("--max-concurrent-streams", "2000")
ONE_CHANNEL_MAX_CALLS = 50_000  # per run, however fast the server: the row stays bounded
# Key -> label of every load measurement, in the order they are reported.
LABELS = {
    "constant": "grpc.aio, constant Task (transport ceiling)",
    "handtuned": "grpc.aio + asyncpg fetchrow (hand-tuned, asyncio)",
    "handtuned_uvloop": "grpc.aio + asyncpg fetchrow (hand-tuned, uvloop)",
    "rest_get": "FastAPI + SQLModel GET /tasks/{id} (REST peer)",
    "get_basic": "TaskService GetTask (BASIC)",
    "get_full": "TaskService GetTask (FULL)",
    "list": "TaskService ListTasks (page of 50, one project)",
    "workers2": "TaskService GetTask (BASIC), --workers 2",
    **{
        key: f"TaskService GetTask (BASIC), one channel, {n:,} in flight"
        for key, n in ONE_CHANNEL.items()
    },
    "rest_post": "FastAPI + SQLModel POST /tasks (REST peer)",
    "create": "TaskService CreateTask",
    "update": "TaskService UpdateTask (description)",
}
OTHER_KEYS = ("stream", "tracing", "blind", "profile", "statements")
ROOT = Path(__file__).resolve().parents[2]
NATIVE = ("h2load", "wrk")
# The bench extra: the REST peer under uvicorn with the loop and HTTP parser it picks when
# installed (as `fastapi[standard]` users have them), uvloop for the hand-tuned ceiling too.
PYTHON_MODULES = ("fastapi", "uvicorn", "sqlmodel", "uvloop", "httptools")


@dataclass(frozen=True)
class Tools:
    """Where the load generators run, and their versions."""

    cpu: int | None  # the CPU the load generators are pinned to; None: not pinned
    versions: str

    def pin(self) -> list[str]:
        """Command prefix that pins a load generator process."""
        return [] if self.cpu is None else ["taskset", "-c", str(self.cpu)]

    def describe(self) -> str:
        """One line for the report."""
        where = (
            f"pinned to CPU {self.cpu} with taskset (servers and PostgreSQL unpinned)"
            if self.cpu is not None
            else "not pinned (one CPU, or no taskset)"
        )
        return f"gRPC: h2load, REST: wrk ({self.versions}); {where}"


def resolve_tools(install: bool, profiling: bool, progress: Callable[[str], None]) -> Tools:
    """h2load and wrk on PATH (`install`: run .ci/system-deps, the project's installer of Debian
    packages, if they are not), and the bench extra importable; SetupError if not."""
    missing = [tool for tool in NATIVE if not shutil.which(tool)]
    if missing and install:
        progress(f"Installing {', '.join(missing)} with .ci/system-deps")
        subprocess.run(["bash", str(ROOT / ".ci" / "system-deps")], check=False)
        missing = [tool for tool in NATIVE if not shutil.which(tool)]
    if missing:
        raise SetupError(f"{', '.join(missing)} missing: run `make system-deps` (as root or sudo)")
    modules = [name for name in PYTHON_MODULES if importlib.util.find_spec(name) is None]
    modules += ["py-spy"] if profiling and py_spy() is None else []
    if modules:
        raise SetupError(f"{', '.join(modules)} missing: `make install` installs the bench extra")
    cpus = sorted(os.sched_getaffinity(0))
    # With two cores the generators get one core's worth of scheduling to themselves, as far
    # as the kernel keeps others off it; pinning servers too would starve them.
    cpu = cpus[-1] if len(cpus) > 1 and shutil.which("taskset") else None
    return Tools(cpu, "; ".join(_version(tool) for tool in NATIVE))


def _version(tool: str) -> str:
    flag = "--version" if tool == "h2load" else "-v"
    done = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
    return ((done.stdout or done.stderr).splitlines() or [tool])[0].strip()


def rest_stack() -> str:
    """The REST peer's packages."""
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PYTHON_MODULES)
    return f"{versions}; uvicorn's loop uvloop, its HTTP parser httptools; pool_pre_ping"


@dataclass(frozen=True)
class PerfConfig(DatabaseConfig):
    """One perf run: `concurrency` requests in flight, over `connections` HTTP/2 connections
    for gRPC (one h2load process each), over `concurrency` HTTP/1.1 connections for REST."""

    duration: float
    warmup: float
    concurrency: int
    connections: int
    batch_size: int
    stream_runs: int
    profile_seconds: float
    quiet_wait: float
    attempts: int
    tracing_rounds: int
    only: frozenset[str]
    tools: Tools
    today: Path | None = None  # a checkout of the service whose "off" tracing is compared

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.duration <= 0 or min(self.warmup, self.profile_seconds, self.quiet_wait) < 0:
            raise SetupError("durations must be positive (warm-up, profile, wait may be 0)")
        counts = (self.concurrency, self.connections, self.batch_size, self.stream_runs)
        if min(*counts, self.attempts, self.tracing_rounds) < 1:
            raise SetupError("concurrency, connections, batch size and runs must be positive")
        if self.concurrency % self.connections:
            raise SetupError("--concurrency must be a multiple of --connections")
        if self.today is not None and not (self.today / "service" / "__main__.py").is_file():
            raise SetupError(f"--today {self.today}: no service/__main__.py there")

    @property
    def streams_per_connection(self) -> int:
        """Concurrent gRPC calls on each HTTP/2 connection."""
        return self.concurrency // self.connections

    def wants(self, key: str) -> bool:
        """Whether the measurement `key` is to run (all of them unless --only names some)."""
        return not self.only or key in self.only


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options only this bench has."""
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--connections", type=int, default=16, help="gRPC connections")
    parser.add_argument("--batch-size", type=int, default=500, help="StreamTasks batch size")
    parser.add_argument(
        "--no-install", action="store_true", help="never run .ci/system-deps for h2load/wrk"
    )
    parser.add_argument("--today", type=Path, metavar="DIR", help="tracing cost: also DIR's code")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated measurements to run: " + ", ".join((*LABELS, *OTHER_KEYS)),
    )


def configure(args: argparse.Namespace, common: dict[str, Any]) -> PerfConfig:
    """The configuration of this run, with its tools at hand (SetupError if they cannot be)."""
    only = frozenset(key for key in args.only.split(",") if key)
    unknown = only - {*LABELS, *OTHER_KEYS}
    if unknown:
        raise SetupError(f"--only: unknown measurement(s) {', '.join(sorted(unknown))}")
    profiling = common["profile_seconds"] > 0 and (not only or "profile" in only)
    return PerfConfig(
        **common,
        concurrency=args.concurrency,
        connections=args.connections,
        batch_size=args.batch_size,
        only=only,
        today=args.today.resolve() if args.today else None,
        tools=resolve_tools(not (args.no_install or args.smoke), profiling, say),
    )
