"""What the layers around a call know about it: its request id and who is calling.

Both are context variables: grpc.aio runs each RPC in its own task, so a value set
while a call is handled belongs to that call alone and dies with its task. Who is
calling is a mutable `Caller` read from the metadata when the call starts, so a done
callback that runs after the RPC ended (outside its task) can still name the caller
without touching the call's ServicerContext (see service.runtime.observability).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

REQUEST_ID_KEY = "x-request-id"
ACTOR_KEY = "x-actor"
ANONYMOUS = "anonymous"
_MAX_ACTOR_LENGTH = 200

# The x-request-id of the RPC this task is handling (a correlation id for logs
# and trailers; not the idempotency `request_id` field of AIP-155).
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


@dataclass(slots=True)
class Caller:
    """Who is calling one RPC: the authenticated principal, else what the caller claims."""

    claimed: str | None = None  # x-actor metadata: unverified, for local use
    principal: str | None = None  # set by authentication; wins over `claimed`

    @property
    def actor(self) -> str:
        """The name the audit trail and the log line use."""
        return self.principal or self.claimed or ANONYMOUS


_caller: ContextVar[Caller | None] = ContextVar("caller", default=None)


def claimed_actor(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The x-actor metadata value, trimmed and bounded; None when absent or blank."""
    for key, value in metadata or ():
        if key == ACTOR_KEY:
            claimed = claimed_actor_value(value)
            if claimed is not None:
                return claimed
    return None


def claimed_actor_value(value: Any) -> str | None:
    """One x-actor metadata value, trimmed and bounded; None when blank or binary."""
    if isinstance(value, str) and value.strip():
        return value.strip()[:_MAX_ACTOR_LENGTH]
    return None


def begin_call(caller: Caller) -> None:
    """Make `caller` the caller of the RPC this task handles."""
    _caller.set(caller)


def current_caller() -> Caller | None:
    """The caller of the RPC being handled; None outside the observed layers."""
    return _caller.get()


def current_principal() -> str | None:
    """The authenticated caller of the RPC being handled; None while auth is off."""
    caller = _caller.get()
    return None if caller is None else caller.principal


def distrust_claimed_actor() -> None:
    """Authentication is on: the caller is who its token names, never what x-actor claims."""
    caller = _caller.get()
    if caller is not None:
        caller.claimed = None


def set_principal(principal: str) -> None:
    """Record the authenticated caller of the RPC this task handles."""
    caller = _caller.get()
    if caller is None:
        caller = Caller()
        _caller.set(caller)
    caller.principal = principal


def request_id_metadata() -> tuple[tuple[str, str], ...]:
    """Trailing metadata that returns the current request id (empty outside an RPC)."""
    request_id = current_request_id.get()
    return ((REQUEST_ID_KEY, request_id),) if request_id else ()
