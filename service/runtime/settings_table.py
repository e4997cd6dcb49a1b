"""The README's configuration table, generated from `Settings` so it cannot drift.

    python -m service.runtime.settings_table README.md           # rewrite the table (`make docs`)
    python -m service.runtime.settings_table --check README.md   # exit 1 if it is stale

The table sits between the BEGIN/END marker comments below; everything else in the
file is left alone. `flag_help` gives `taskservice --help` the same facts per flag.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from service.settings import Settings

BEGIN = (
    "<!-- BEGIN settings-table: generated from service/settings.py by `make docs`;"
    " do not edit by hand -->"
)
END = "<!-- END settings-table -->"
HEADER = "| environment variable | flag | type | default | meaning |\n|---|---|---|---|---|\n"


def env_name(name: str) -> str:
    """The environment variable of setting `name`, e.g. TASKSERVICE_POOL_SIZE."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return (prefix + name).upper()


def flag_name(name: str, field: FieldInfo) -> str:
    """The command-line flag(s) of setting `name`, as `taskservice --help` lists them."""
    flag = "--" + name.replace("_", "-")
    if field.annotation is bool:
        return f"{flag} / --no-{flag[2:]}"
    return flag


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def type_text(field: FieldInfo) -> str:
    """A short human type, with the field's numeric bounds."""
    annotation = field.annotation
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        # `X | None`: an optional setting; describe X.
        inner = [arg for arg in get_args(annotation) if arg is not type(None)]
        annotation = inner[0] if len(inner) == 1 else annotation
        origin = get_origin(annotation)
    names: dict[Any, str] = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        SecretStr: "secret string",
        Path: "file path",
    }
    containers: dict[Any, str] = {dict: "JSON object", list: "JSON list"}
    text = names.get(annotation) or containers.get(origin, str(annotation))
    bounds = []
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            bounds.append(f">= {_number(rule.ge)}")
        elif isinstance(rule, annotated_types.Gt):
            bounds.append(f"> {_number(rule.gt)}")
        elif isinstance(rule, annotated_types.Le):
            bounds.append(f"<= {_number(rule.le)}")
        elif isinstance(rule, annotated_types.Lt):
            bounds.append(f"< {_number(rule.lt)}")
    return " ".join([text, ", ".join(bounds)]) if bounds else text


def default_text(field: FieldInfo) -> str:
    """The default as a user would write it (secrets are not printed)."""
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, SecretStr):
        return "a development key: set your own"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return _number(value)


def _is_literal_default(field: FieldInfo) -> bool:
    """True when default_text shows the value itself (not "unset" or a stand-in)."""
    value = field.get_default(call_default_factory=True, validated_data={})
    return value is not None and not isinstance(value, SecretStr)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`"


def render_table() -> str:
    """The markdown table of every setting, one row each, in declaration order."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = default_text(field)
        if _is_literal_default(field):
            default = _code(default)
        flags = " ".join(_code(flag) for flag in flag_name(name, field).split(" / "))
        cells = [
            _code(env_name(name)),
            flags,
            type_text(field),
            default,
            field.description or "",
        ]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |\n")
    return HEADER + "".join(rows)


def flag_help(name: str, field: FieldInfo) -> str:
    """Help text of one flag for argparse: meaning, type, default and variable."""
    text = (
        f"{field.description or ''} [{type_text(field)}; default {default_text(field)};"
        f" env {env_name(name)}]"
    )
    return text.replace("%", "%%").replace("`", "")


def replace_table(document: str) -> str:
    """`document` with the text between the markers replaced by the current table."""
    start = document.find(BEGIN)
    end = document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"settings table markers not found: add the lines\n{BEGIN}\n{END}")
    return document[: start + len(BEGIN)] + "\n" + render_table() + document[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with --check, verify) the table in the given markdown file."""
    parser = argparse.ArgumentParser(
        prog="python -m service.runtime.settings_table",
        description="Write the README's configuration table from the Settings class.",
    )
    parser.add_argument("path", nargs="?", default="README.md", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file's table is stale")
    args = parser.parse_args(argv)
    current = args.path.read_text(encoding="utf-8")
    wanted = replace_table(current)
    if args.check:
        if current != wanted:
            print(  # noqa: T201
                f"{args.path}: the settings table is stale: run `make docs`", file=sys.stderr
            )
            return 1
        return 0
    if current != wanted:
        args.path.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
