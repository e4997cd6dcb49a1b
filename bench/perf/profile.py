"""Where a server's time goes under load: py-spy samples, summed by function and by library."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path

TOP = 15
HOT_LEAVES = 3  # the hottest functions whose callers are broken down
CALLER_DEPTH = 5
# Library of a frame, by the start of its (shortened) file name.
AREAS = (
    ("service/", "service (TaskService code)"),
    ("grpc", "grpc / grpc.aio"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("sqlmodel/", "SQLModel"),
    ("asyncpg/", "asyncpg"),
    ("google/protobuf", "protobuf"),
    ("asyncio/", "asyncio event loop"),
    ("uvloop/", "uvloop event loop"),
    ("pydantic", "pydantic"),
    ("logging/", "logging"),
    ("opentelemetry", "opentelemetry"),
    ("prometheus_client", "prometheus_client"),
    ("contextlib", "contextlib"),
    ("typing", "typing"),
)


@dataclass(frozen=True)
class Profile:
    """Sample counts of one recording."""

    samples: int
    self_counts: tuple[tuple[str, int], ...]  # innermost frame
    inclusive_counts: tuple[tuple[str, int], ...]  # anywhere on the stack, project code only
    areas: tuple[tuple[str, int], ...]  # innermost frame's library
    callers: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]  # hot leaf -> caller chains
    raw_path: Path

    def share(self, count: int) -> str:
        """A count as a share of all samples."""
        return f"{count / self.samples:.1%}" if self.samples else "-"

    def lines(self) -> list[str]:
        """The summary as plain text lines."""
        out = [f"{self.samples:,} busy samples; raw stacks in {self.raw_path}", ""]
        out += ["Self time by library (innermost frame):"]
        out += [f"  {self.share(n):>6}  {name}" for name, n in self.areas]
        out += ["", f"Top {TOP} functions by self time:"]
        out += [f"  {self.share(n):>6}  {name}" for name, n in self.self_counts]
        out += ["", "Project code by inclusive time (anywhere on the stack):"]
        out += [f"  {self.share(n):>6}  {name}" for name, n in self.inclusive_counts]
        for leaf, chains in self.callers:
            out += ["", f"Who calls {leaf} (nearest callers first):"]
            out += [f"  {self.share(n):>6}  {chain}" for chain, n in chains]
        return out


def py_spy() -> str | None:
    """The py-spy executable: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, output: Path, load: Awaitable[object]) -> Profile:
    """Sample `pid` for `seconds` while `load` runs (it should outlast the recording). Idle
    samples (the loop waiting in epoll) are not recorded: shares are of the busy time."""
    # The configuration made sure that py-spy is there.
    command = [py_spy() or "py-spy", "record", "-p", str(pid), "-d", str(max(1, round(seconds)))]
    command += ["-r", "200", "-f", "raw", "--nolineno", "--nonblocking", "-o", str(output)]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    spied, _ = await asyncio.gather(process.communicate(), load)
    if process.returncode != 0:
        raise RuntimeError(f"py-spy failed: {spied[0].decode(errors='replace')[-1000:]}")
    return summarise(output.read_text().splitlines(), output)


def summarise(raw_lines: Iterable[str], raw_path: Path) -> Profile:
    """Counts by innermost function, by library, and project functions by inclusive time."""
    stacks = _stacks(raw_lines)
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, count in stacks:
        self_counts[frames[-1]] += count
        areas[area(frames[-1])] += count
        for frame in set(frames):
            if _is_project(frame):
                inclusive[frame] += count
    hottest = [leaf for leaf, _ in self_counts.most_common(HOT_LEAVES)]
    return Profile(
        samples=sum(count for _, count in stacks),
        self_counts=tuple(self_counts.most_common(TOP)),
        inclusive_counts=tuple(inclusive.most_common(TOP)),
        areas=tuple(areas.most_common()),
        callers=tuple((leaf, _callers(stacks, leaf)) for leaf in hottest),
        raw_path=raw_path,
    )


def _stacks(raw_lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """(frames outermost first, count) of each line of py-spy's raw output: `;`-separated
    `function (file)` frames, a space, and how often that stack was seen."""
    stacks = []
    for line in raw_lines:
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            stacks.append((stack.split(";"), int(count_text)))
    return stacks


def _callers(
    stacks: list[tuple[list[str], int]], leaf: str, top: int = 5
) -> tuple[tuple[str, int], ...]:
    """The most frequent chains of callers (function names) of the innermost frame `leaf`."""
    chains: Counter[str] = Counter()
    for frames, count in stacks:
        if frames[-1] == leaf:
            nearest = frames[-2 : -2 - CALLER_DEPTH : -1]
            chains[" < ".join(frame.split(" (")[0] for frame in nearest) or "(none)"] += count
    return tuple(chains.most_common(top))


def _file(frame: str) -> str:
    return frame.rpartition("(")[2].rstrip(")")


def area(frame: str) -> str:
    """The library a frame belongs to."""
    file = _file(frame)
    for prefix, name in AREAS:
        if file.startswith(prefix) or f"/{prefix}" in file:
            return name
    return "other: " + file.split("/")[0]


def _is_project(frame: str) -> bool:
    return _file(frame).startswith(("service/", "taskmanager/"))
