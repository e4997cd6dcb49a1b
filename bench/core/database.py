"""The benchmark's own database: create, migrate (Alembic only), seed, check, drop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from time import perf_counter

import asyncpg
from alembic.script import ScriptDirectory

from bench.core.config import DatabaseConfig
from bench.core.seed import seed
from service.storage.migrate import alembic_config, upgrade

TABLES_REVISION = "0001"


@dataclass(frozen=True)
class SeedReport:
    """How the database was obtained and how long each step took (seconds)."""

    reused: bool
    copy_seconds: float = 0.0
    index_seconds: float = 0.0
    vacuum_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        """Seeding wall time, tables to analysed indexes."""
        return self.copy_seconds + self.index_seconds + self.vacuum_seconds

    def describe(self) -> str:
        """How the data got there, in a line."""
        if self.reused:
            return "reused an already seeded database (--keep)"
        return (
            f"{self.total_seconds:.0f} s (tables + COPY {self.copy_seconds:.0f} s, "
            f"indexes {self.index_seconds:.0f} s, VACUUM ANALYZE {self.vacuum_seconds:.0f} s)"
        )


async def prepare_database(cfg: DatabaseConfig) -> SeedReport:
    """A migrated, seeded, analysed benchmark database (reused with --keep if complete)."""
    if cfg.keep and await is_seeded(cfg):
        return SeedReport(reused=True)
    await recreate_database(cfg)
    started = perf_counter()
    # Tables only (0001); `upgrade head` then builds the indexes on the loaded table, far
    # quicker than maintaining them row by row during the COPY.
    await asyncio.to_thread(upgrade, cfg.url, TABLES_REVISION)
    await seed(cfg.dsn, cfg.tasks, cfg.projects, cfg.workers)
    copied = perf_counter()
    await asyncio.to_thread(upgrade, cfg.url)
    indexed = perf_counter()
    await _execute(cfg.dsn, "VACUUM (ANALYZE) projects, workers, tasks")
    return SeedReport(False, copied - started, indexed - copied, perf_counter() - indexed)


async def is_seeded(cfg: DatabaseConfig) -> bool:
    """Whether the benchmark database exists at head with the configured row counts."""
    admin = await asyncpg.connect(cfg.admin_dsn)
    try:
        found = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", cfg.database)
    finally:
        await admin.close()
    if not found:
        return False
    connection = await asyncpg.connect(cfg.dsn)
    try:
        if await connection.fetchval("SELECT to_regclass('alembic_version')") is None:
            return False
        version = await connection.fetchval("SELECT version_num FROM alembic_version")
        tasks = await connection.fetchval("SELECT count(*) FROM tasks")
        projects = await connection.fetchval("SELECT count(*) FROM projects")
    finally:
        await connection.close()
    head = ScriptDirectory.from_config(alembic_config(cfg.url)).get_current_head()
    return bool(version == head and (tasks, projects) == (cfg.tasks, cfg.projects))


async def recreate_database(cfg: DatabaseConfig) -> None:
    """Drop (if present) and create the benchmark database."""
    await drop_database(cfg)
    await _execute(cfg.admin_dsn, f'CREATE DATABASE "{cfg.database}"')
    # Index builds after the load: give them memory (this database only).
    await _execute(
        cfg.admin_dsn, f"ALTER DATABASE \"{cfg.database}\" SET maintenance_work_mem = '512MB'"
    )


async def drop_database(cfg: DatabaseConfig) -> None:
    """Drop the benchmark database, disconnecting anyone still on it."""
    await _execute(cfg.admin_dsn, f'DROP DATABASE IF EXISTS "{cfg.database}" WITH (FORCE)')


async def _execute(dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def reset_writes(cfg: DatabaseConfig) -> None:
    """Undo what write benchmarks added: tasks past the seeded ids, audit events, idempotency
    keys; then re-analyse. Updated tasks keep their new values (and versions)."""
    connection = await asyncpg.connect(cfg.dsn)
    try:
        await connection.execute("DELETE FROM tasks WHERE id > $1", cfg.tasks)
        await connection.execute("DELETE FROM audit_events")
        await connection.execute("DELETE FROM idempotency_keys")
        await connection.execute("VACUUM (ANALYZE) tasks, audit_events, idempotency_keys")
    finally:
        await connection.close()
