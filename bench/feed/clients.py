"""Client processes of the feed bench (watchers, writers): each `python -m <module> ...`,
says `ready` on stdout once connected, and writes a JSON summary to its output file."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 120.0

C = TypeVar("C", bound="Clients")


@dataclass
class Clients:
    """Running client processes and their result files."""

    processes: list[asyncio.subprocess.Process]
    outputs: list[Path]

    @property
    def pids(self) -> list[int]:
        """Their process ids."""
        return [process.pid for process in self.processes]

    async def results(self, timeout: float) -> list[dict[str, Any]]:
        """Wait (up to `timeout` each) for them to exit; their summaries."""
        for process in self.processes:
            await asyncio.wait_for(process.wait(), timeout)
        return [json.loads(path.read_text()) for path in self.outputs]


async def start_clients(
    kind: type[C], module: str, arguments: Sequence[tuple[Any, ...]], outputs: Sequence[Path]
) -> C:
    """One process of `module` per argument tuple (its output file last); returns once
    every one said `ready`."""
    started = kind([], list(outputs))
    for args, output in zip(arguments, outputs, strict=True):
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", module, *map(str, (*args, output))),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        started.processes.append(process)
    for process in started.processes:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError(f"a {module} process failed: {line!r}")
    return started
