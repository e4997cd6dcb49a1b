"""Pagination for every list and stream: order_by parsing, page sizes and page tokens.

A token carries the last row's sort key and id (never an offset), so each
page costs one index range scan however deep it is. Tokens are Fernet
(AES + HMAC) encrypted, hence opaque and tamper-evident, and bound to the
query they came from by a fingerprint of the request minus its paging fields.
With read replicas a token also carries the WAL position its page was read at,
so the next page is never read where that position is not replayed yet.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from google.protobuf.message import Message

from service.api.request_digest import request_digest
from service.api.validation import Violations
from service.storage.errors import InvalidArgument, echoed
from service.storage.keyset import Ordering, Position, SortField, decode_id

TOKEN_VERSION = 1


def parse_order_by(
    text: str, fields: Mapping[str, SortField], default: str, violations: Violations
) -> Ordering:
    """Parse `"<field> [asc|desc]"`; anything else is a violation listing the choices."""
    words = (text.strip() or default).split()
    name = words[0]
    direction = words[1].lower() if len(words) == 2 else "asc"
    if len(words) > 2 or name not in fields or direction not in ("asc", "desc"):
        violations.add(
            "order_by",
            f"unsupported order {echoed(text)}; accepted fields: {', '.join(fields)}, "
            "each optionally followed by ' desc'",
            "INVALID_ORDER_BY",
        )
        name, direction = default.split()[0], "asc"
    return Ordering(name, fields[name], direction == "desc")


def clamp_size(requested: int, default: int, maximum: int) -> int:
    """0 means the default; above the maximum means the maximum."""
    return default if requested == 0 else min(requested, maximum)


def fingerprint(request: Message, method: str, paging_fields: Sequence[str]) -> str:
    """A digest of everything in a request that decides its result set."""
    return request_digest(method, request, paging_fields)[:32]


class PageTokens:
    """Encrypts keyset positions into opaque tokens and checks them on the way back."""

    def __init__(self, secret: str) -> None:
        key = base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())
        self._fernet = Fernet(key)

    def encode(
        self, query: str, ordering: Ordering, position: Position, read_at: int | None = None
    ) -> str:
        """Token for the page after `position` of the query fingerprinted `query`, whose
        page was read at WAL position `read_at` (with replicas; absent otherwise)."""
        payload = {
            "v": TOKEN_VERSION,
            "q": query,
            "o": ordering.name,
            "k": ordering.field.encode(position.key),
            "i": position.id,
        }
        if read_at is not None:
            payload["l"] = read_at  # optional: tokens without it stay valid
        token = self._fernet.encrypt(json.dumps(payload, separators=(",", ":")).encode())
        return token.decode().rstrip("=")

    def decode(self, token: str, query: str, ordering: Ordering, field: str) -> Position:
        """The position in `token`; INVALID_ARGUMENT if foreign, damaged or for another query."""
        return self.decode_read(token, query, ordering, field)[0]

    def decode_read(
        self, token: str, query: str, ordering: Ordering, field: str
    ) -> tuple[Position, int | None]:
        """`decode`, and the WAL position the token's page was read at (None if unknown)."""
        try:
            padded = token + "=" * (-len(token) % 4)
            payload = json.loads(self._fernet.decrypt(padded.encode()))
            if payload["v"] != TOKEN_VERSION:
                raise ValueError("unknown token version")
            position = Position(ordering.field.decode(payload["k"]), decode_id(payload["i"]))
            read_at = payload.get("l")
            if read_at is not None and (type(read_at) is not int or read_at < 0):
                raise ValueError("bad read position")
        except (InvalidToken, ValueError, KeyError, TypeError, OverflowError) as error:
            raise _bad_token(field, "is not a valid token from this service") from error
        if payload["q"] != query or payload["o"] != ordering.name:
            raise _bad_token(field, "belongs to a request with other filters or order")
        return position, read_at


def _bad_token(field: str, description: str) -> InvalidArgument:
    violations = Violations()
    violations.add(field, description, "INVALID_PAGE_TOKEN")
    return InvalidArgument(violations.items, reason="INVALID_PAGE_TOKEN")


@dataclass(frozen=True)
class PageRequest:
    """A validated page request: order, size, where to start, and the query it belongs to."""

    ordering: Ordering
    size: int
    after: Position | None
    query: str
    read_at: int | None = None  # WAL position the previous page was read at, if known


@dataclass(frozen=True)
class Pagination:
    """How one RPC pages: its sort fields, defaults and request field names."""

    method: str
    order_fields: Mapping[str, SortField]
    default_order: str
    default_size: int
    max_size: int
    size_field: str = "page_size"
    token_field: str = "page_token"

    def read(self, request: Message, tokens: PageTokens, violations: Violations) -> PageRequest:
        """Validate paging fields (raising every violation so far) and decode the token."""
        requested = getattr(request, self.size_field)
        if requested < 0:
            violations.add(self.size_field, "must not be negative", "NEGATIVE")
        order_text = getattr(request, "order_by", "")
        ordering = parse_order_by(order_text, self.order_fields, self.default_order, violations)
        violations.raise_if_any()
        query = fingerprint(request, self.method, (self.size_field, self.token_field))
        token = getattr(request, self.token_field)
        after, read_at = (
            tokens.decode_read(token, query, ordering, self.token_field) if token else (None, None)
        )
        size = clamp_size(requested, self.default_size, self.max_size)
        return PageRequest(ordering, size, after, query, read_at)

    def token_after(
        self,
        tokens: PageTokens,
        page: PageRequest,
        position: Position | None,
        read_at: int | None = None,
    ) -> str:
        """The token that continues after `position` (read at WAL position `read_at`);
        empty when there is nothing more."""
        if position is None:
            return ""
        return tokens.encode(page.query, page.ordering, position, read_at)
