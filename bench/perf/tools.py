"""The load generators and Python packages the perf bench needs, installed when missing.

h2load (Debian `nghttp2-client`) drives the gRPC calls and wrk (Debian `wrk`)
the REST peer; both come from apt-get (as root, or through `sudo -n`). The
Python packages come from the `bench` extra of pyproject.toml via pip. The
load generator runs under `taskset` on the last CPU this process may use, so
with two cores it has one core's worth of scheduling to itself as far as the
kernel keeps others off it; servers and PostgreSQL are not pinned.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.perf.config import PerfConfig
from bench.perf.profile import py_spy

ROOT = Path(__file__).resolve().parents[2]
APT_PACKAGES = {"h2load": "nghttp2-client", "wrk": "wrk"}
PYTHON_MODULES = ("fastapi", "uvicorn", "sqlmodel")
Progress = Callable[[str], None]


class ToolError(RuntimeError):
    """A tool the run needs is missing and could not be installed."""


@dataclass(frozen=True)
class Tools:
    """Which load generator drives each protocol, and where it is pinned."""

    grpc: str  # "h2load" or "python"
    http: str  # "wrk" or "python"
    cpu: int | None  # the CPU the load generator is pinned to; None: not pinned
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
        return f"gRPC: {self.grpc}, REST: {self.http} ({self.versions}); {where}"


def resolve_tools(cfg: PerfConfig, progress: Progress) -> Tools:
    """The generators to use, installing h2load/wrk and the bench extra if allowed."""
    profiling = cfg.profile_seconds > 0 and cfg.wants("profile")
    ensure_python_packages(cfg.install, progress, profiling)
    if cfg.generator == "python":
        return Tools("python", "python", _pin_cpu(), "bench.perf.pyload")
    if cfg.generator == "native":
        ensure_native(cfg.install, progress)
    grpc = "h2load" if shutil.which("h2load") else "python"
    http = "wrk" if shutil.which("wrk") else "python"
    return Tools(grpc, http, _pin_cpu(), _versions(grpc, http))


def _pin_cpu() -> int | None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None
    return cpus[-1]


def _versions(*tools: str) -> str:
    found = []
    for tool in dict.fromkeys(tools):
        if tool == "python":
            found.append("bench.perf.pyload")
            continue
        flag = "--version" if tool == "h2load" else "-v"
        done = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
        found.append(((done.stdout or done.stderr).splitlines() or [tool])[0].strip())
    return "; ".join(found)


def ensure_native(install: bool, progress: Progress) -> None:
    """h2load and wrk on PATH, from apt-get if missing; ToolError if that cannot be."""
    missing = [APT_PACKAGES[tool] for tool in APT_PACKAGES if not shutil.which(tool)]
    if not missing:
        return
    hint = (
        f"install {' '.join(missing)} (Debian/Ubuntu: apt-get install {' '.join(missing)}), "
        "or run with --load-generator python (its figures are not comparable)"
    )
    if not install:
        raise ToolError(f"missing {', '.join(missing)} and --no-install given: {hint}")
    progress(f"Installing {' '.join(missing)} with apt-get")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [*prefix, "apt-get", "update", "-qq"],
        [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=environment)
        if done.returncode != 0:
            raise ToolError(f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}\n{hint}")
    if not all(shutil.which(tool) for tool in APT_PACKAGES):
        raise ToolError(f"apt-get finished but h2load/wrk are still not on PATH: {hint}")


def bench_requirements() -> list[str]:
    """The `bench` extra of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"]["bench"])


def ensure_python_packages(install: bool, progress: Progress, profiling: bool) -> None:
    """FastAPI and uvicorn importable (and py-spy runnable when profiling), from pip."""
    missing = [name for name in PYTHON_MODULES if importlib.util.find_spec(name) is None]
    missing += ["py-spy"] if profiling and not py_spy() else []
    if not missing:
        return
    hint = f"pip install -e '.[bench]' (missing: {', '.join(missing)})"
    if not install:
        raise ToolError(f"the REST peer and the profile need the bench extra: {hint}")
    progress(f"Installing the bench extra with pip ({', '.join(missing)} missing)")
    command = [sys.executable, "-m", "pip", "install", "--quiet", *bench_requirements()]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolError(f"pip install failed: {done.stderr.strip()[-500:]}\n{hint}")
    importlib.invalidate_caches()


def has_uvloop() -> bool:
    """Whether the hand-tuned ceiling can also be measured on uvloop."""
    return importlib.util.find_spec("uvloop") is not None
