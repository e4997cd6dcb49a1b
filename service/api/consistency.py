"""Consistency tokens: read-your-writes across replicas without sticky sessions.

Every write returns, in trailing metadata, the primary's WAL position after it
committed; a read that sends it back is served only where that position has been
replayed (see service.storage.replicas). The token is PostgreSQL's own pg_lsn text.
"""

from __future__ import annotations

from typing import Any

from service.api.call_context import request_id_metadata
from service.storage.errors import FieldViolation, InvalidArgument
from service.storage.replicas import format_lsn, parse_lsn

CONSISTENCY_TOKEN_KEY = "x-consistency-token"


def requested_position(context: Any) -> int | None:
    """The position the caller's consistency token asks for; INVALID_ARGUMENT if malformed."""
    for key, value in context.invocation_metadata() or ():
        if key == CONSISTENCY_TOKEN_KEY:
            try:
                return parse_lsn(value) if isinstance(value, str) else parse_lsn("")
            except ValueError:
                # The value is never echoed: clients cap the size of trailing metadata.
                violation = FieldViolation(
                    CONSISTENCY_TOKEN_KEY,
                    "is not a consistency token of this service: send back what a write returned",
                    "INVALID_CONSISTENCY_TOKEN",
                )
                raise InvalidArgument([violation], reason="INVALID_CONSISTENCY_TOKEN") from None
    return None


def publish_position(context: Any, position: int) -> None:
    """Return a write's position as its consistency token (with the request id, since
    setting trailing metadata replaces what was set before)."""
    context.set_trailing_metadata(
        (*request_id_metadata(), (CONSISTENCY_TOKEN_KEY, format_lsn(position)))
    )
