"""Process logging set-up: readable text or one JSON object per line, with structured fields.

A log call adds structured fields with `extra={"fields": {...}}`. Every line
written while an RPC is handled also carries that RPC's request id and, while the
call is traced, its `trace_id` and `span_id` (OpenTelemetry, W3C hex form).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from opentelemetry import trace

from service.api.call_context import current_request_id


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields the log call passed, plus the current request id if they lack one."""
    fields: dict[str, Any] = dict(getattr(record, "fields", None) or {})
    request_id = current_request_id.get()
    if request_id is not None:
        fields.setdefault("request_id", request_id)
    span = trace.get_current_span().get_span_context()
    if span.is_valid:  # only while a traced call runs (tracing off: never)
        fields.setdefault("trace_id", format(span.trace_id, "032x"))
        fields.setdefault("span_id", format(span.span_id, "016x"))
    return fields


class TextFormatter(logging.Formatter):
    """One readable line: time, level, logger, message, then fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The usual line with the record's fields appended."""
        line = super().formatMessage(record)
        fields = record_fields(record)
        if not fields:
            return line
        return line + "".join(f" {key}={_text_value(value)}" for key, value in fields.items())


def _text_value(value: Any) -> str:
    text = str(value)
    if text and not any(c.isspace() or c in '"=' for c in text):
        return text
    return json.dumps(text)  # quoted, so a value can never forge another field or line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields, any exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single-line JSON object."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **record_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: Literal["text", "json"] = "text") -> None:
    """Log to stderr at `level`, as readable text or as JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    # Alembic announces each of its plugins at INFO on every start-up.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
