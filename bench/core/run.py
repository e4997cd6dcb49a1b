"""Running a bench: options, configuration, database, measurements, report and README."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from bench.core.config import DatabaseConfig, SetupError, add_options, common_fields
from bench.core.database import drop_database, prepare_database
from bench.core.machine import describe_machine
from bench.core.report import Report, write_regions


def say(text: str) -> None:
    """Progress and results on stdout, flushed at once."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _run(run: ModuleType, report: ModuleType, cfg: DatabaseConfig) -> Report:
    """Prepare the database, measure, describe the machine; drop the database if asked."""
    try:
        say(f"Preparing database {cfg.database} ({cfg.tasks:,} tasks, {cfg.projects:,} projects)")
        seeding = await prepare_database(cfg)
        measured = await run.measure(cfg)
        machine = await describe_machine(cfg.dsn)
    finally:
        if cfg.drop_after:
            await drop_database(cfg)
    return report.report(cfg, machine, seeding, measured)


def run_bench(name: str, argv: Sequence[str]) -> int:
    """`python -m bench <name>`: the package bench/<name>/ has the same shape for every bench:
    config.py (DATABASE, SIZES, add_options, configure), run.py (measure) and report.py
    (report). Exit status 0, 1 if a correctness check failed (missed targets are only
    reported), 2 if the run cannot start."""
    config, run, report = (
        importlib.import_module(f"bench.{name}.{part}") for part in ("config", "run", "report")
    )
    description = (run.__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=description)
    add_options(parser, config.DATABASE, config.SIZES)
    config.add_options(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config.configure(args, common_fields(args, config.DATABASE, config.SIZES))
    except SetupError as error:
        sys.stderr.write(f"{error}\n")
        return 2
    # Handlers on the root logger keep Alembic from installing its INFO logging.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(_run(run, report, cfg))
    say("\n" + result.text())
    if cfg.readme is not None:
        write_regions(cfg.readme, {f"{name}:results": result.markdown()})
        say(f"\nWrote {cfg.readme}")
    return 1 if result.failed(check=True) else 0
