"""Change-feed cursors: opaque, tamper-evident tokens for a position in the feed.

A cursor is a feed position (commit number, event id) sealed with Fernet (AES + HMAC)
under a key derived from page_token_secret, so every replica accepts every replica's
cursors. Unlike page tokens, cursors are not bound to a request's filters: a position
is the same for every watcher, so a client may resume with other filters.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from cryptography.fernet import Fernet, InvalidToken

from service.api.validation import Violations
from service.storage.errors import InvalidArgument
from service.storage.feed_events import FeedPosition

_VERSION = 1
_LAYOUT = struct.Struct(">BQQ")  # version, commit number, event id


class FeedCursors:
    """Seals feed positions into cursors and opens them again."""

    def __init__(self, secret: str) -> None:
        # Its own key: a page token is never mistaken for a cursor, nor the reverse.
        digest = hashlib.sha256(b"taskservice feed cursor\x00" + secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def encode(self, position: FeedPosition) -> str:
        """The cursor of `position`."""
        sealed = self._fernet.encrypt(_LAYOUT.pack(_VERSION, *position))
        return sealed.decode().rstrip("=")

    def decode(self, cursor: str, field: str = "start_cursor") -> FeedPosition:
        """The position in `cursor`; INVALID_ARGUMENT if it is not one of ours."""
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            version, seq, event_id = _LAYOUT.unpack(self._fernet.decrypt(padded.encode()))
            if version != _VERSION:
                raise ValueError("unknown cursor version")
        except (InvalidToken, ValueError, struct.error, UnicodeEncodeError) as error:
            violations = Violations()
            violations.add(field, "is not a cursor of this service", "INVALID_CURSOR")
            raise InvalidArgument(violations.items, reason="INVALID_CURSOR") from error
        return FeedPosition(seq, event_id)
