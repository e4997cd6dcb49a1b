"""Benchmark configuration: the database every bench seeds, and the pagination bench's sizes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from service.settings import normalise_database_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FULL_DATABASE = "taskservice_bench"
_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class DatabaseConfig:
    """The seeded database of one benchmark run, and what to do with it and the README."""

    admin_url: str
    database: str
    tasks: int
    projects: int
    workers: int
    keep: bool
    drop_after: bool
    smoke: bool
    readme: Path | None

    def __post_init__(self) -> None:
        if not _SAFE_NAME.match(self.database):
            raise ValueError(f"database name {self.database!r} must match {_SAFE_NAME.pattern}")
        if min(self.tasks, self.projects, self.workers) < 1:
            raise ValueError("tasks, projects and workers must be positive")

    @property
    def admin_dsn(self) -> str:
        """asyncpg DSN of the administrative database (CREATE/DROP DATABASE)."""
        return _dsn(self.admin_url)

    @property
    def dsn(self) -> str:
        """asyncpg DSN of the benchmark database."""
        return _dsn(self.admin_url, self.database)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the benchmark database, as the service takes it."""
        url = make_url(normalise_database_url(self.admin_url)).set(database=self.database)
        return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class PaginationConfig(DatabaseConfig):
    """The pagination bench: page and stream sizes, repetitions."""

    page_size: int
    deep_page: int
    repeat: int
    stream_runs: int
    batch_size: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.repeat, self.stream_runs, self.page_size, self.batch_size) < 1:
            raise ValueError("repetitions, runs and sizes must be positive")
        if self.deep_page * self.page_size > self.tasks:
            raise ValueError(
                "the deep page lies beyond the last task: use fewer pages or more tasks"
            )

    @property
    def deep_offset(self) -> int:
        """OFFSET of the deep page in the equivalent SQL query."""
        return (self.deep_page - 1) * self.page_size


def _dsn(admin_url: str, database: str | None = None) -> str:
    url = make_url(normalise_database_url(admin_url)).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)
