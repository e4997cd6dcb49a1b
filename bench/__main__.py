"""Command line: `python -m bench [pagination|perf|scaleout|feed] [options]` (none: pagination)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bench.core.run import run_bench

COMMANDS = ("pagination", "perf", "scaleout", "feed")
USAGE = """usage: python -m bench [pagination|perf|scaleout|feed] [options]

    python -m bench pagination ...   keyset pages, streams and searches (bench/pagination/)
    python -m bench perf ...         unary RPC throughput under load (bench/perf/)
    python -m bench scaleout ...     PgBouncer and read-replica costs (bench/scaleout/)
    python -m bench feed ...         WatchTasks delivery latency and costs (bench/feed/)
    python -m bench ...              the same as `pagination`

`python -m bench <command> --help` lists each command's options.
"""


def split_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(command, its arguments); no command named means the pagination bench."""
    if argv and argv[0] in COMMANDS:
        return argv[0], list(argv[1:])
    return COMMANDS[0], list(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named bench."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    return run_bench(*split_command(args))


if __name__ == "__main__":
    sys.exit(main())
