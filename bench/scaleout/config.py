"""The scale-out bench's configuration: seconds per measurement, rounds, calls in flight."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from typing import Any

from bench.core.config import DatabaseConfig, SetupError, data_sizes

DATABASE = "taskservice_scaleout"
SIZES = {**data_sizes(tasks=5_000, projects=10), "seconds": (10.0, 1.0), "rounds": (3, 1)}


@dataclass(frozen=True)
class ScaleoutConfig(DatabaseConfig):
    """Rounds alternating a baseline and a scaled-out server, `seconds` of load per call."""

    seconds: float
    rounds: int
    in_flight: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seconds <= 0 or min(self.rounds, self.in_flight) < 1:
            raise SetupError("seconds, rounds and calls in flight must be positive")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options only this bench has."""
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight")


def configure(args: argparse.Namespace, common: dict[str, Any]) -> ScaleoutConfig:
    """The configuration of this run."""
    if not shutil.which("h2load"):
        raise SetupError("h2load missing: run `make system-deps` (as root or sudo)")
    return ScaleoutConfig(**common, in_flight=args.in_flight)
