"""Command line: `python -m bench [pagination|perf] [options]` (also `make bench`).

    python -m bench pagination ...   keyset pages, streams and searches (bench/pagination.py)
    python -m bench perf ...         issue 6 throughput benchmark (bench/perf/)
    python -m bench scaleout ...     PgBouncer and read replica costs (bench/perf/scaleout.py)
    python -m bench ...              the same as `pagination` (the original command line)

`python -m bench <command> --help` lists each command's options.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

COMMANDS = ("pagination", "perf", "scaleout")
DEFAULT_COMMAND = "pagination"


def split_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(command, its arguments); no command named means the pagination bench."""
    if argv and argv[0] in COMMANDS:
        return argv[0], list(argv[1:])
    return DEFAULT_COMMAND, list(argv)


def _entry(command: str) -> Callable[[Sequence[str]], int]:
    # Imported on demand: each bench pulls in its own dependencies.
    if command == "perf":
        from bench.perf.main import main
    elif command == "scaleout":
        from bench.perf.scaleout import main
    else:
        from bench.pagination import main
    return main


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the named bench."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write(__doc__ or "")
        return 0
    command, rest = split_command(args)
    return _entry(command)(rest)


if __name__ == "__main__":
    sys.exit(main())
