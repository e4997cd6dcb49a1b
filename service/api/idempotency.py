"""Idempotent creates (AIP-155): the one place request_id is honoured.

The key is claimed inside the create's own transaction, so the key, the
created rows and the remembered response commit together or not at all;
the database's primary key makes it hold across concurrent retries and
across server processes.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message

from service.api.request_digest import request_digest
from service.storage.database import UnitOfWork
from service.storage.errors import Aborted, AlreadyExists
from service.storage.models import IdempotencyKey

Response = TypeVar("Response", bound=Message)


def payload_hash(method: str, request: Message) -> str:
    """Digest of the request without its request_id: "the same payload"."""
    return request_digest(method, request, ("request_id",))


async def create_once(
    uow: UnitOfWork,
    method: str,
    request: Message,
    response_type: type[Response],
    create: Callable[[], Awaitable[Response]],
) -> Response:
    """Run `create` and commit, unless this request_id already produced a response."""
    request_id: str = getattr(request, "request_id", "")
    if not request_id:
        response = await create()
        await uow.commit()
        return response
    key_id, digest = str(uuid.UUID(request_id)), payload_hash(method, request)
    for _ in range(2):  # a lost claim means the winner committed: the 2nd lookup sees it
        existing = await uow.idempotency.lookup(key_id)
        if existing is not None:
            return _replay(existing, method, digest, response_type)
        key = await uow.idempotency.claim(key_id, method, digest)
        if key is not None:
            response = await create()
            key.response = response.SerializeToString(deterministic=True)
            await uow.commit()
            return response
    raise Aborted("REQUEST_ID_BUSY", "a request with this request_id is in progress; retry")


def _replay(
    key: IdempotencyKey, method: str, digest: str, response_type: type[Response]
) -> Response:
    if key.method != method or key.payload_hash != digest:
        raise AlreadyExists(
            "REQUEST_ID_REUSED",
            "this request_id was already used for a different request",
            request_id=key.request_id,
        )
    return response_type.FromString(key.response)
