"""The pagination bench's configuration: data sizes, page and batch sizes, repetitions."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from bench.core.config import DatabaseConfig, SetupError, data_sizes

DATABASE = "taskservice_bench"
SIZES = {
    **data_sizes(tasks=1_000_000, projects=1_000),
    "deep_page": (2_000, 20),
    "repeat": (51, 5),
    "stream_runs": (2, 1),
}


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
            raise SetupError("repetitions, runs and sizes must be positive")
        if self.deep_page * self.page_size > self.tasks:
            raise SetupError(
                "the deep page lies beyond the last task: use fewer pages or more tasks"
            )

    @property
    def deep_offset(self) -> int:
        """OFFSET of the deep page in the equivalent SQL query."""
        return (self.deep_page - 1) * self.page_size


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options only this bench has."""
    parser.add_argument("--page-size", type=int, default=50, help="ListTasks page size")
    parser.add_argument("--batch-size", type=int, default=500, help="StreamTasks batch size")


def configure(args: argparse.Namespace, common: dict[str, Any]) -> PaginationConfig:
    """The configuration of this run."""
    return PaginationConfig(**common, page_size=args.page_size, batch_size=args.batch_size)
