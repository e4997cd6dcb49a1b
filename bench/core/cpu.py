"""CPU counters of the machine and of groups of processes, and who used the CPU between two
snapshots, in cores: each group, and "other" (what none of them accounts for)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.core.servers import cpu_seconds

# A group's processes and their CPU seconds so far, by pid (asked at each snapshot, so a
# process that starts meanwhile counts and one that exits takes only its last interval away).
PidSeconds = dict[int, float]
Group = Callable[[], PidSeconds]


def machine_jiffies() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return float(total - idle), float(total)


def postgres_cpu_seconds() -> PidSeconds:
    """CPU time of every live `postgres` process, by pid (what a backend that exits
    before the next snapshot used after this one is lost)."""
    seconds: PidSeconds = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                seconds[int(entry.name)] = cpu_seconds(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return seconds


def processes(*pids: int) -> Group:
    """A group of fixed processes (those that exit count no more)."""

    def read() -> PidSeconds:
        found: PidSeconds = {}
        for pid in pids:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found[pid] = cpu_seconds(pid)
        return found

    return read


@dataclass(frozen=True)
class GroupSnapshot:
    """The CPU counters of named process groups and of the machine at one moment."""

    wall: float
    groups: dict[str, PidSeconds]
    machine_busy: float
    machine_total: float


def take(groups: Mapping[str, Group]) -> GroupSnapshot:
    """Every group's counters now."""
    busy, total = machine_jiffies()
    read = {name: group() for name, group in groups.items()}
    return GroupSnapshot(time.monotonic(), read, busy, total)


@dataclass(frozen=True)
class GroupUsage:
    """Cores each group used between two snapshots, "other", and the machine's busy share."""

    cores: dict[str, float]
    other: float  # kernel work (loopback networking) or other programs on the machine
    machine_busy: float  # 0..1 of all CPUs


def used(before: GroupSnapshot, after: GroupSnapshot) -> GroupUsage:
    """What each group used from `before` to `after`, in cores."""
    wall = after.wall - before.wall
    cores = {
        name: sum(s - before.groups[name].get(pid, 0.0) for pid, s in pids.items()) / wall
        for name, pids in after.groups.items()
    }
    busy = after.machine_busy - before.machine_busy
    total = after.machine_total - before.machine_total
    busy_cores = busy / os.sysconf("SC_CLK_TCK") / wall
    return GroupUsage(
        cores=cores,
        other=max(0.0, busy_cores - sum(cores.values())),
        machine_busy=busy / total if total else 0.0,
    )
