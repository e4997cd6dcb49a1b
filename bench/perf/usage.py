"""Who used the CPU during a measurement, in cores: server, PostgreSQL, load generator, others."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from dataclasses import dataclass

from bench.core.cpu import machine_jiffies, postgres_cpu_seconds
from bench.core.servers import ServerProcess

QUIET_CORES = 0.3  # busy cores of a machine with nothing running but our idle servers
DISTURBED_CORES = 0.3  # "other" CPU beyond this during a measurement: something else ran


@dataclass(frozen=True)
class Snapshot:
    """CPU counters at one moment."""

    wall: float
    server: float
    postgres: dict[int, float]  # CPU seconds of each live `postgres` process, by pid
    children: float  # this process's reaped children: the load-generator processes
    machine_busy: float
    machine_total: float


@dataclass(frozen=True)
class Usage:
    """CPU used between two snapshots, in cores, and the machine's busy share."""

    server: float
    postgres: float
    generator: float
    other: float
    machine_busy: float  # 0..1 of all CPUs
    # "other": the machine's busy time none of the above accounts for, kernel work (loopback
    # networking) or another program on the machine, which disturbs the figures.

    @property
    def total(self) -> float:
        """Cores busy in all."""
        return self.server + self.postgres + self.generator + self.other

    @property
    def disturbed(self) -> bool:
        """Whether something else used the CPU meanwhile."""
        return self.other > DISTURBED_CORES

    def describe(self) -> str:
        """e.g. `server 0.98, PostgreSQL 0.41, generator 0.12, other 0.3; machine 86% busy`."""
        return (
            f"server {self.server:.2f}, PostgreSQL {self.postgres:.2f}, "
            f"generator {self.generator:.2f}, other {self.other:.2f}; "
            f"machine {self.machine_busy:.0%} busy"
        )


def snapshot(server: ServerProcess) -> Snapshot:
    """The counters now."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, total = machine_jiffies()
    return Snapshot(
        wall=time.monotonic(),
        server=server.cpu_seconds(tree=True),
        postgres=postgres_cpu_seconds(),
        children=children.ru_utime + children.ru_stime,
        machine_busy=busy,
        machine_total=total,
    )


def between(before: Snapshot, after: Snapshot) -> Usage:
    """What was used from `before` to `after`."""
    wall = after.wall - before.wall
    total = after.machine_total - before.machine_total
    busy = after.machine_busy - before.machine_busy
    server = (after.server - before.server) / wall
    # Per process: a backend that exits meanwhile (say, of the server stopped just
    # before) must not take its whole past CPU time off the sum; one that starts counts.
    postgres = (
        sum(seconds - before.postgres.get(pid, 0.0) for pid, seconds in after.postgres.items())
        / wall
    )
    generator = (after.children - before.children) / wall
    busy_cores = busy / os.sysconf("SC_CLK_TCK") / wall
    return Usage(
        server=server,
        postgres=postgres,
        generator=generator,
        other=max(0.0, busy_cores - server - postgres - generator),
        machine_busy=busy / total if total else 0.0,
    )


async def wait_for_quiet(max_seconds: float, quiet_seconds: int = 3) -> float:
    """Wait (up to `max_seconds`) until the machine has been nearly idle (under
    QUIET_CORES busy) for `quiet_seconds` in a row; the seconds waited. Another test run
    or build on the machine would disturb the figures."""
    waited, quiet = 0.0, 0
    while waited < max_seconds and quiet < quiet_seconds:
        busy, _ = machine_jiffies()
        await asyncio.sleep(1.0)
        idle = (machine_jiffies()[0] - busy) / os.sysconf("SC_CLK_TCK") < QUIET_CORES
        quiet = quiet + 1 if idle else 0
        waited += 0.0 if idle else 1.0
    return waited
