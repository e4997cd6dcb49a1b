"""Keyset ordering: the sort fields a list may use, the seek clause, a page's end position.

A page ends at the last row's sort key and id (never an offset), so each page costs
one index range scan however deep it is. `service.api.pagination` carries positions
in page tokens; repositories apply them here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Select, literal, tuple_

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SortField:
    """A column a client may order by, and how its values travel in a token."""

    column: Any
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


# Decoders take what a token carried and raise ValueError (or OverflowError) for
# anything the column could not hold: a token is only as trustworthy as its key.


def _encode_time(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _decode_time(value: Any) -> datetime:
    return _EPOCH + timedelta(microseconds=_integer(value, 64))


def _identity(value: Any) -> Any:
    return value


def _integer(value: Any, bits: int) -> int:
    limit = 2 ** (bits - 1)
    if type(value) is not int or not -limit <= value < limit:
        raise ValueError(f"not a {bits}-bit integer")
    return value


def decode_id(value: Any) -> int:
    """A row id from a token (BIGINT)."""
    return _integer(value, 64)


def _text(value: Any) -> str:
    if not isinstance(value, str) or "\x00" in value:  # PostgreSQL text holds no NUL
        raise ValueError("not a string")
    return value


def time_field(column: Any) -> SortField:
    """A timestamp sort field, exact to the microsecond in tokens."""
    return SortField(column, _encode_time, _decode_time)


def int_field(column: Any) -> SortField:
    """An integer sort field (BIGINT, else a 32-bit INTEGER)."""
    bits = 64 if isinstance(column.type, BigInteger) else 32
    return SortField(column, _identity, lambda value: _integer(value, bits))


def text_field(column: Any) -> SortField:
    """A string sort field."""
    return SortField(column, _identity, _text)


@dataclass(frozen=True)
class Ordering:
    """A parsed AIP-132 order_by: one field, a direction, ties broken by id."""

    name: str
    field: SortField
    descending: bool

    def apply(self, statement: Select[Any], id_column: Any) -> Select[Any]:
        """ORDER BY the field, then id, in the same direction."""
        if self.descending:
            return statement.order_by(self.field.column.desc(), id_column.desc())
        return statement.order_by(self.field.column.asc(), id_column.asc())

    def after(self, position: Position, id_column: Any) -> ColumnElement[bool]:
        """Rows strictly after `position` in this order (a row-value comparison)."""
        row = tuple_(self.field.column, id_column)
        bound = tuple_(
            literal(position.key, self.field.column.type), literal(position.id, id_column.type)
        )
        return row < bound if self.descending else row > bound

    def position_of(self, entity: Any) -> Position:
        """The keyset position of a row in this order."""
        return Position(getattr(entity, self.field.column.key), entity.id)


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last row's sort key and id."""

    key: Any
    id: int
