"""What the layers around a call know about it: its request id and its authenticated principal.

Both are context variables: grpc.aio runs each RPC in its own task, so a value set
while a call is handled belongs to that call alone and dies with its task.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID_KEY = "x-request-id"
# The x-request-id of the RPC this task is handling (a correlation id for logs
# and trailers; not the idempotency `request_id` field of AIP-155).
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
_principal: ContextVar[str | None] = ContextVar("principal", default=None)


def request_id_metadata() -> tuple[tuple[str, str], ...]:
    """Trailing metadata that returns the current request id (empty outside an RPC)."""
    request_id = current_request_id.get()
    return ((REQUEST_ID_KEY, request_id),) if request_id else ()


def current_principal() -> str | None:
    """The authenticated caller of the RPC being handled; None while auth is off."""
    return _principal.get()


def set_principal(principal: str) -> None:
    """Record the authenticated caller of the RPC this task handles."""
    _principal.set(principal)
