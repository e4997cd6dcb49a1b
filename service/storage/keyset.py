"""Keyset ordering: the sort fields a list may use, the seek clause, a page's end position.

A page ends at the last row's sort key and id (never an offset), so each page costs
one index range scan however deep it is. `service.api.pagination` carries positions
in page tokens; repositories apply them here.

A nullable sort field puts rows without a key last in both directions. No single
index range scan yields that order from any position, so such a page is two range
scans, each at most a page long, in one statement: the rows with a key after the
position (index (key, id)), then the rows without one (a partial index on id WHERE
key IS NULL); the page is the first `limit` of the two, joined back to the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    literal,
    nulls_last,
    select,
    tuple_,
    union_all,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SortField:
    """A column a client may order by, and how its values travel in a token."""

    column: Any
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    # Rows whose key is NULL sort after all others, ascending and descending.
    nulls_last: bool = False


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


def _encode_optional_time(value: datetime | None) -> int | None:
    return None if value is None else _encode_time(value)


def _decode_optional_time(value: Any) -> datetime | None:
    return None if value is None else _decode_time(value)


def optional_time_field(column: Any) -> SortField:
    """A nullable timestamp sort field; rows without a time come last either way."""
    return SortField(column, _encode_optional_time, _decode_optional_time, nulls_last=True)


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

    def window(
        self, statement: Select[Any], id_column: Any, after: Position | None, limit: int
    ) -> Select[Any]:
        """`statement` narrowed to its first `limit` rows after `after`, in this order."""
        if self.field.nulls_last:
            return self._nulls_last_window(statement, id_column, after, limit)
        if after is not None:
            statement = statement.where(self.after(after, id_column))
        return self.apply(statement, id_column).limit(limit)

    def _nulls_last_window(
        self, statement: Select[Any], id_column: Any, after: Position | None, limit: int
    ) -> Select[Any]:
        key = self.field.column
        conditions = () if statement.whereclause is None else (statement.whereclause,)
        keyless = select(id_column, key).where(*conditions, key.is_(None))
        if after is not None and after.key is None:  # already among the rows without a key
            keyless = keyless.where(
                id_column < after.id if self.descending else id_column > after.id
            )
        order = id_column.desc() if self.descending else id_column.asc()
        branches = [keyless.order_by(order).limit(limit).subquery().select()]
        if after is None or after.key is not None:
            keyed = select(id_column, key).where(*conditions, key.is_not(None))
            if after is not None:
                keyed = keyed.where(self.after(after, id_column))
            branches.insert(0, self.apply(keyed, id_column).limit(limit).subquery().select())
        page = union_all(*branches).subquery("keyset_page")
        page_key, page_id = page.c[key.key], page.c[id_column.key]
        if self.descending:
            ordered = (nulls_last(page_key.desc()), page_id.desc())
        else:
            ordered = (nulls_last(page_key.asc()), page_id.asc())
        return statement.join(page, id_column == page_id).order_by(*ordered).limit(limit)

    def position_of(self, entity: Any) -> Position:
        """The keyset position of a row in this order."""
        return Position(getattr(entity, self.field.column.key), entity.id)


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last row's sort key and id."""

    key: Any
    id: int
