"""Where the figures came from: CPU, memory, kernel, PostgreSQL and library versions."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import asyncpg


@dataclass(frozen=True)
class Machine:
    """A description of the machine and software a run used."""

    cpus: int
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    postgres: str
    libraries: str
    date: str

    def lines(self) -> list[str]:
        """Human-readable `key: value` lines."""
        return [
            f"CPU: {self.cpus} × {self.cpu_model}",
            f"Memory: {self.memory_gib:.1f} GiB",
            f"Kernel: Linux {self.kernel}",
            f"PostgreSQL: {self.postgres}",
            f"Python: {self.python}; {self.libraries}",
            f"Date: {self.date}",
        ]


def _proc_value(path: str, key: str) -> str:
    for line in Path(path).read_text().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return "unknown"


def _libraries() -> str:
    names = ("grpcio", "protobuf", "asyncpg", "SQLAlchemy", "sqlmodel")
    return ", ".join(f"{name} {metadata.version(name)}" for name in names)


async def describe_machine(dsn: str) -> Machine:
    """Collect the description (PostgreSQL's version is asked of the server)."""
    connection = await asyncpg.connect(dsn)
    try:
        postgres = await connection.fetchval("SELECT version()")
    finally:
        await connection.close()
    memory_kib = int(_proc_value("/proc/meminfo", "MemTotal").split()[0])
    return Machine(
        cpus=len(os.sched_getaffinity(0)),
        cpu_model=_proc_value("/proc/cpuinfo", "model name"),
        memory_gib=memory_kib / 1024 / 1024,
        kernel=platform.release(),
        python=platform.python_version(),
        postgres=str(postgres).split(",")[0],
        libraries=_libraries(),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
