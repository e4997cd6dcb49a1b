"""Command-line pieces every bench shares: database options, full/smoke sizes, progress output."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.config import DEFAULT_ADMIN_URL

# (full, smoke) defaults of an option.
Sizes = Mapping[str, tuple[Any, Any]]


def add_database_options(parser: argparse.ArgumentParser, full_database: str) -> None:
    """Where the benchmark database lives and what happens to it and the README."""
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


def add_size_options(parser: argparse.ArgumentParser, sizes: Sizes) -> None:
    """One option per size, defaulting to its full or smoke value."""
    for name, (full, smoke) in sizes.items():
        flag = "--" + name.replace("_", "-")
        kind = type(full)
        parser.add_argument(
            flag, type=kind, help=f"default {_show(full)} (--smoke: {_show(smoke)})"
        )


def _show(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def resolve_sizes(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    """The value of every size option: given, else the full or smoke default."""
    pick = 1 if args.smoke else 0
    return {
        name: getattr(args, name) if getattr(args, name) is not None else values[pick]
        for name, values in sizes.items()
    }


def database_options(args: argparse.Namespace, full_database: str, readme: Path) -> dict[str, Any]:
    """The DatabaseConfig fields the common options decide."""
    database = args.database_name or (
        f"taskservice_bench_smoke_{uuid.uuid4().hex[:12]}" if args.smoke else full_database
    )
    return {
        "admin_url": args.database_url,
        "database": database,
        "keep": args.keep,
        "drop_after": args.drop or args.smoke,
        "smoke": args.smoke,
        "readme": None if args.no_readme else args.readme or (None if args.smoke else readme),
    }


def say(text: str) -> None:
    """Progress and results on stdout, flushed at once."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
