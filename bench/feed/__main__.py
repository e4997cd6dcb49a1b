"""`python -m bench.feed [--smoke] [--rate R] [--duration S] ...`: the change-feed bench."""

from __future__ import annotations

import asyncio
import sys

from bench.feed.config import parse
from bench.feed.report import table
from bench.feed.run import run


def main(argv: list[str] | None = None) -> int:
    """Run once and print the figures."""
    cfg = parse(sys.argv[1:] if argv is None else argv)
    results = asyncio.run(run(cfg))
    sys.stdout.write(table(cfg, results) + "\n")
    return 0 if results.listeners == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
