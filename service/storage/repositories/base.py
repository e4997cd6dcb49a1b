"""What every repository shares: get by id, add, keyset pages."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import ARRAY, ColumnElement, Result, Select, any_, func, literal
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.base import Executable, ExecutableOption
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from service.storage.errors import NotFound
from service.storage.keyset import Ordering, Position

Entity = TypeVar("Entity", bound=SQLModel)

# How many missing ids a NOT_FOUND names: ten 19-digit ids fit the error translator's
# 200-byte bound on a metadata value, so the list arrives whole.
LISTED_IDS = 10


Item = TypeVar("Item")
T = TypeVar("T")
# Bound parameters of one Core statement (a list: executemany).
Parameters = dict[str, Any] | list[dict[str, Any]] | None
# session.info key: the session holds a connection only while one of its Core
# statements runs (read-only units of work, whose statements each autocommit).
RELEASE_AFTER_STATEMENT = "taskservice_release_after_statement"


@dataclass(frozen=True)
class Page(Generic[Item]):
    """One page of rows, the position of its last row, and whether more follow."""

    items: list[Item]
    last_position: Position | None
    more: bool

    @property
    def next_position(self) -> Position | None:
        """Where the next page starts; None at the end."""
        return self.last_position if self.more else None


class Repository(Generic[Entity]):
    """Rows of one table, read and written through the unit of work's session."""

    model: ClassVar[type[Any]]
    resource: ClassVar[str]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def dialect(self) -> str:
        """Name of the database dialect (postgresql or sqlite)."""
        bind = self.session.bind
        assert bind is not None
        return bind.dialect.name

    def any_of(self, column: Any, values: list[Any]) -> ColumnElement[bool]:
        """`column` equals any of `values`."""
        if self.dialect == "postgresql":
            # One array parameter instead of an expanding IN list: the statement text
            # no longer depends on how many values there are, so it compiles once.
            return column == any_(literal(values, ARRAY(column.type)))  # type: ignore[no-any-return]
        return column.in_(values)  # type: ignore[no-any-return]

    def contains_text(self, column: Any, text: str) -> ColumnElement[bool]:
        """`column` contains `text`, case-insensitively (Unicode-aware on both backends)."""
        if self.dialect == "postgresql":
            # ILIKE, served by a pg_trgm GIN index where the column has one.
            return column.icontains(text, autoescape=True)  # type: ignore[no-any-return]
        # casefold() is registered on each SQLite connection (database.py).
        return func.casefold(column).contains(text.casefold(), autoescape=True)

    def not_found(self, entity_id: int) -> NotFound:
        """The NOT_FOUND error for this resource type."""
        return NotFound(
            f"{self.resource.upper()}_NOT_FOUND",
            f"{self.resource} {entity_id} does not exist",
            **{f"{self.resource}_id": entity_id},
        )

    async def find(
        self,
        entity_id: int,
        options: Sequence[ExecutableOption] = (),
        *,
        for_update: bool = False,
        for_share: bool = False,
    ) -> Entity | None:
        """The row with this id, or None; optionally locked (and then re-read)."""
        statement = select(self.model).where(self.model.id == entity_id).options(*options)
        if for_update or for_share:
            # A locked read must see the row as committed after the lock was granted.
            statement = statement.with_for_update(read=for_share).execution_options(
                populate_existing=True
            )
        result = await self.session.exec(statement)
        entity: Entity | None = result.first()
        return entity

    async def get(
        self, entity_id: int, options: Sequence[ExecutableOption] = (), *, for_update: bool = False
    ) -> Entity:
        """The row with this id; NOT_FOUND if there is none."""
        entity = await self.find(entity_id, options, for_update=for_update)
        if entity is None:
            raise self.not_found(entity_id)
        return entity

    def in_order(self, entity_ids: Sequence[int], found: Mapping[int, T]) -> list[T]:
        """`found[id]` for each of `entity_ids` in that order; NOT_FOUND naming the
        missing ids (the first LISTED_IDS of them) if any."""
        missing = list(dict.fromkeys(i for i in entity_ids if i not in found))
        if missing:
            listed = ", ".join(str(i) for i in missing[:LISTED_IDS])
            more = f" and {len(missing) - LISTED_IDS} more" if len(missing) > LISTED_IDS else ""
            raise NotFound(
                f"{self.resource.upper()}_NOT_FOUND",
                f"{self.resource}s {listed}{more} do not exist",
                **{f"{self.resource}_ids": listed.replace(" ", ""), "missing_count": len(missing)},
            )
        return [found[i] for i in entity_ids]

    async def exists(self, entity_id: int) -> bool:
        """Whether a row with this id exists."""
        result = await self.session.exec(select(self.model.id).where(self.model.id == entity_id))
        return result.first() is not None

    async def add(self, entity: Entity) -> Entity:
        """Insert a new row and return it with its id."""
        self.session.add(entity)
        await self.session.flush()
        return entity

    async def save(self, entity: Entity) -> Entity:
        """Write the changes made to a loaded row."""
        await self.session.flush()
        return entity

    async def delete(self, entity: Entity) -> None:
        """Remove a row."""
        await self.session.delete(entity)
        await self.session.flush()

    async def fetch_rows(self, statement: Select[Any]) -> Sequence[Sequence[Any]]:
        """Plain rows of a Core SELECT, for hot read paths that need no entities.

        Rows skip the ORM's identity map and per-object bookkeeping, which cost
        more than the database read itself on a page of 500; run on the session's
        connection, they also skip the ORM's result set-up (Core rows).
        """
        rows: Sequence[Sequence[Any]] = await self._run_core(statement, None, Result.all)
        return rows

    async def fetch_row(
        self, statement: Select[Any], parameters: dict[str, Any]
    ) -> Sequence[Any] | None:
        """The first row of a prebuilt Core SELECT, run on the session's connection.

        Core execution skips the ORM's statement compile and result set-up; the
        connection is the unit of work's own, so this stays one session per RPC.
        """
        row: Sequence[Any] | None = await self._run_core(statement, parameters, Result.first)
        return row

    async def execute_core(self, statement: Executable, parameters: Parameters) -> None:
        """Run a Core INSERT/UPDATE/DELETE on the session's connection."""
        await self._run_core(statement, parameters, _discard)

    async def insert_returning_id(
        self, statement: Executable, parameters: Parameters
    ) -> int | None:
        """Run a Core INSERT ... RETURNING id; the new id (None if it inserted nothing)."""
        new_id: int | None = await self._run_core(statement, parameters, Result.scalar_one_or_none)
        return new_id

    async def _run_core(
        self, statement: Executable, parameters: Parameters, consume: Callable[[Result[Any]], T]
    ) -> T:
        # Fetching the connection, executing and consuming the result (and, for a
        # read-only unit of work, returning the connection) inside ONE run_sync is one
        # greenlet hop; each extra hop cost ~10% of a GetTask's CPU (measured in-process).
        return await self.session.run_sync(_execute_and_consume, statement, parameters, consume)

    async def page_rows(
        self,
        statement: Select[Any],
        ordering: Ordering,
        after: Position | None,
        limit: int,
        key_index: int,
    ) -> Page[Sequence[Any]]:
        """Like `page`, for rows whose id is column 0 and sort key column `key_index`."""
        id_column: InstrumentedAttribute[int] = self.model.id
        rows = await self.fetch_rows(ordering.window(statement, id_column, after, limit + 1))
        items = list(rows[:limit])
        last = Position(items[-1][key_index], items[-1][0]) if items else None
        return Page(items, last, more=len(rows) > limit)

    async def page(
        self,
        statement: SelectOfScalar[Entity],
        ordering: Ordering,
        after: Position | None,
        limit: int,
    ) -> Page[Entity]:
        """The `limit` rows after `after` in `ordering` (one extra row tells if more follow)."""
        id_column: InstrumentedAttribute[int] = self.model.id
        statement = ordering.window(statement, id_column, after, limit + 1)  # type: ignore[assignment]
        rows = list((await self.session.exec(statement)).all())
        items = rows[:limit]
        last = ordering.position_of(items[-1]) if items else None
        return Page(items, last, more=len(rows) > limit)


def _execute_and_consume(
    session: Session, statement: Executable, parameters: Parameters, consume: Callable[[Any], T]
) -> T:
    try:
        return consume(session.connection().execute(statement, parameters))
    finally:
        if session.info.get(RELEASE_AFTER_STATEMENT):
            session.close()


def _discard(_result: Result[Any]) -> None:
    return None
