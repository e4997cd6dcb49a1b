"""What every bench configures alike: its database, the common options, full and smoke sizes."""

from __future__ import annotations

import argparse
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from service.settings import normalise_database_url

README = Path(__file__).resolve().parents[1] / "README.md"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Option name -> (full, smoke) default.
Sizes = Mapping[str, tuple[Any, Any]]


def data_sizes(tasks: int, projects: int) -> dict[str, tuple[int, int]]:
    """The seeded data's (full, smoke) sizes; a smoke run seeds 2,000 tasks, 10 projects."""
    return {"tasks": (tasks, 2_000), "projects": (projects, 10), "workers": (200, 10)}


class SetupError(ValueError):
    """The run cannot start: a bad option or a missing tool (exit status 2)."""


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
            raise SetupError(f"database name {self.database!r} must match {_SAFE_NAME.pattern}")
        if min(self.tasks, self.projects, self.workers) < 1:
            raise SetupError("tasks, projects and workers must be positive")

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


def _dsn(admin_url: str, database: str | None = None) -> str:
    url = make_url(normalise_database_url(admin_url)).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def add_options(parser: argparse.ArgumentParser, full_database: str, sizes: Sizes) -> None:
    """Where the database lives, what happens to it and the README, and one option per size."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", DEFAULT_ADMIN_URL),
        help="administrative PostgreSQL URL (default: $TEST_DATABASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--database-name",
        help=f"benchmark database (default {full_database}; --smoke: a random, dropped one)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny and quick; checks, not figures")
    parser.add_argument("--keep", action="store_true", help="reuse the database if complete")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument("--readme", type=Path, help="where to write results (full runs: bench/)")
    parser.add_argument("--no-readme", action="store_true", help="do not write the README")
    for name, (full, smoke) in sizes.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(full),
            help=f"default {full:,} (--smoke: {smoke:,})",
        )


def common_fields(args: argparse.Namespace, full_database: str, sizes: Sizes) -> dict[str, Any]:
    """The DatabaseConfig fields and the sizes the common options decide."""
    database = args.database_name or (
        f"taskservice_bench_smoke_{uuid.uuid4().hex[:12]}" if args.smoke else full_database
    )
    pick = 1 if args.smoke else 0
    given = {name: getattr(args, name) for name in sizes}
    return {
        "admin_url": args.database_url,
        "database": database,
        "keep": args.keep,
        "drop_after": args.drop or args.smoke,
        "smoke": args.smoke,
        "readme": None if args.no_readme else args.readme or (None if args.smoke else README),
        **{name: sizes[name][pick] if value is None else value for name, value in given.items()},
    }
