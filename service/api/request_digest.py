"""A stable digest of a request message minus some of its fields."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from google.protobuf.message import Message


def request_digest(method: str, request: Message, ignoring: Iterable[str]) -> str:
    """SHA-256 (hex) of `method` and `request` with the `ignoring` fields cleared.

    Deterministic serialisation makes equal requests give equal digests; page
    tokens and idempotency keys both bind themselves to a request this way.
    """
    kept = type(request)()
    kept.CopyFrom(request)
    for name in ignoring:
        kept.ClearField(name)
    serialized = kept.SerializeToString(deterministic=True)
    return hashlib.sha256(method.encode() + b"\0" + serialized).hexdigest()
