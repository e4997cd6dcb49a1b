"""Change-feed cursors: opaque, tamper-evident tokens for a position in the feed.

A cursor is a feed position (commit number, event id) sealed with AES-SIV under a key
derived from page_token_secret, so every replica accepts every replica's cursors.
AES-SIV is deterministic authenticated encryption: one position always gives the same
cursor, so clients may compare cursors for equality. Unlike page tokens, cursors are
not bound to a request's filters: a position is the same for every watcher, so a
client may resume with other filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from service.api.validation import Violations
from service.storage.errors import InvalidArgument
from service.storage.feed_events import FeedPosition

_VERSION = 1
_LAYOUT = struct.Struct(">BQQ")  # version, commit number, event id


class FeedCursors:
    """Seals feed positions into cursors and opens them again."""

    def __init__(self, secret: str) -> None:
        # Its own key: a page token is never mistaken for a cursor, nor the reverse.
        key = hashlib.sha512(b"taskservice feed cursor\x00" + secret.encode()).digest()
        self._siv = AESSIV(key)

    def encode(self, position: FeedPosition) -> str:
        """The cursor of `position` (always the same one)."""
        sealed = self._siv.encrypt(_LAYOUT.pack(_VERSION, *position), None)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def decode(self, cursor: str, field: str = "start_cursor") -> FeedPosition:
        """The position in `cursor`; INVALID_ARGUMENT if it is not one of ours."""
        try:
            sealed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            version, seq, event_id = _LAYOUT.unpack(self._siv.decrypt(sealed, None))
            if version != _VERSION:
                raise ValueError("unknown cursor version")
        except (InvalidTag, ValueError, binascii.Error, struct.error) as error:
            violations = Violations()
            violations.add(field, "is not a cursor of this service", "INVALID_CURSOR")
            raise InvalidArgument(violations.items, reason="INVALID_CURSOR") from error
        return FeedPosition(seq, event_id)
