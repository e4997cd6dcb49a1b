"""Command line: `taskservice [serve] [--migrate] [--flags]`, `taskservice migrate|purge`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, get_origin

from pydantic import ValidationError

from service.runtime.logs import configure_logging
from service.runtime.settings_table import flag_help
from service.settings import Settings


def _parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a shortened or mistyped flag is an error, never another setting.
    parser = argparse.ArgumentParser(
        prog="taskservice",
        allow_abbrev=False,
        description="TaskService gRPC server. Flags override TASKSERVICE_* environment variables.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "migrate", "purge"),
        default="serve",
        help="serve (default); migrate: apply migrations and exit; purge: drop soft-deleted "
        "tasks older than 30 days, request ids older than 7 days and change-feed history "
        "older than feed_retention_days, then exit",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=flag_help(name, field),
            )
        else:
            parser.add_argument(flag, dest=name, default=None, help=flag_help(name, field))
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    """Environment first, then the flags given on the command line."""
    overrides: dict[str, Any] = {
        name: _parse_flag(name, value)
        for name, value in vars(args).items()
        if name in Settings.model_fields and value is not None
    }
    return Settings(**overrides)


def _parse_flag(name: str, value: Any) -> Any:
    """Dict and list settings take JSON on the command line, as in the environment."""
    origin = get_origin(Settings.model_fields[name].annotation)
    if isinstance(value, str) and origin in (dict, list):
        try:
            return json.loads(value)
        except json.JSONDecodeError as error:
            raise SystemExit(f"--{name.replace('_', '-')}: not valid JSON ({error})") from error
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m service` and the `taskservice` script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args)
    except ValidationError as error:
        print(f"invalid configuration:\n{error}", file=sys.stderr)  # noqa: T201
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "serve" and settings.workers > 1:
        return _supervise(settings)
    if args.command == "migrate" or settings.migrate:
        from service.storage.migrate import upgrade_configured

        upgrade_configured(settings)
        if args.command == "migrate":
            return 0
    if args.command == "purge":
        from service.storage.purge import purge

        asyncio.run(purge(settings))
        return 0
    from service.runtime import event_loop
    from service.runtime.server import PortInUse, serve

    try:
        event_loop.run(settings, serve(settings))
    except PortInUse as error:
        print(error, file=sys.stderr)  # noqa: T201
        return 1
    except (ValueError, OSError) as error:  # unreadable TLS files, bad token file, ...
        print(f"cannot start: {error}", file=sys.stderr)  # noqa: T201
        return 2
    return 0


def _supervise(settings: Settings) -> int:
    """Serve from several processes; this one must not import grpc (see supervisor.py)."""
    from service.runtime.supervisor import ConfigurationError, supervise

    try:
        return supervise(settings)
    except ConfigurationError as error:
        print(error, file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":
    sys.exit(main())
