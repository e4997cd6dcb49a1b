"""SQL for the change feed: task events in commit order, the head, the retention horizon."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Result,
    Select,
    and_,
    bindparam,
    func,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.sql.selectable import ScalarSelect

from service.storage.feed_events import WHOLE_COMMIT, FeedEvent, FeedPosition, feed_event
from service.storage.models import AuditEvent, FeedCommit, FeedHorizon
from service.storage.repositories.base import Repository
from service.storage.repositories.tasks import BASIC_KEYS

_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_COMMITS = FeedCommit.__table__  # type: ignore[attr-defined]
_HORIZON_TABLE = FeedHorizon.__table__  # type: ignore[attr-defined]
_HORIZON = select(_HORIZON_TABLE.c.seq).where(_HORIZON_TABLE.c.id == 1).scalar_subquery()


def _head(dialect: str) -> ScalarSelect[Any]:
    """The newest position's commit number (the horizon when nothing is retained)."""
    newest = (
        select(func.max(_COMMITS.c.seq))
        if dialect == "postgresql"
        else select(func.max(_EVENTS.c.id))
    ).scalar_subquery()
    return select(func.coalesce(newest, _HORIZON)).scalar_subquery()


def _events_after(dialect: str) -> Select[Any]:
    """Task events after (:seq, :event_id) in feed order, at most :limit, each row with
    the horizon read in the same statement (so it is as of the same snapshot)."""
    if dialect == "postgresql":
        seq, commit_time = _COMMITS.c.seq, _COMMITS.c.commit_time
        source: Any = _COMMITS.join(_EVENTS, _EVENTS.c.xid == _COMMITS.c.xid)
    else:
        seq, commit_time, source = _EVENTS.c.id, _EVENTS.c.event_time, _EVENTS
    after_seq: Any = bindparam("seq")
    after_id: Any = bindparam("event_id")
    return (
        select(
            seq,
            _EVENTS.c.id,
            _EVENTS.c.entity_id,
            _EVENTS.c.action,
            _EVENTS.c.actor,
            commit_time,
            _EVENTS.c.changes,
            _EVENTS.c.state,
            _HORIZON,
        )
        .select_from(source)
        # seq >= :seq first: the range an index can serve; then the tie within a commit.
        .where(
            seq >= after_seq,
            or_(seq > after_seq, _EVENTS.c.id > after_id),
            _EVENTS.c.entity_type == "task",
        )
        .order_by(seq, _EVENTS.c.id)
        .limit(bindparam("limit"))
    )


_READS = {dialect: _events_after(dialect) for dialect in ("postgresql", "sqlite")}
_BOUNDS = {dialect: select(_HORIZON, _head(dialect)) for dialect in ("postgresql", "sqlite")}


@dataclass(frozen=True)
class FeedRead:
    """Events read from the feed, and the retention horizon as of the same read."""

    events: list[FeedEvent]
    horizon: int | None  # None when no event was read


class FeedRepository(Repository[AuditEvent]):
    """The change feed's reads, and its retention."""

    model = AuditEvent
    resource = "audit_event"

    def head_column(self) -> ColumnElement[Any]:
        """The head's commit number as a column, for a read that must know it as of
        its own snapshot (the initial snapshot of a watch)."""
        column: ColumnElement[Any] = _head(self.dialect).label("feed_head")
        return column

    async def bounds(self) -> tuple[int, int]:
        """(horizon, head): commit numbers up to the horizon are purged; the head is the
        newest committed."""
        row = await self.fetch_row(_BOUNDS[self.dialect], {})
        assert row is not None
        return int(row[0]), int(row[1])

    async def read_after(self, after: FeedPosition, limit: int) -> FeedRead:
        """Up to `limit` task events after `after`, in commit order."""
        parameters = {"seq": after.seq, "event_id": after.event_id, "limit": limit}
        rows = await self._rows(_READS[self.dialect], parameters)
        # SQLite numbers each event as its own commit (its writer commits in id order).
        whole = self.dialect != "postgresql"
        events = [
            feed_event(
                FeedPosition(row[0], WHOLE_COMMIT if whole else row[1]),
                *row[2:8],
                row_keys=BASIC_KEYS,
            )
            for row in rows
            if row[7] is not None  # no state: purged, behind the horizon the caller checks
        ]
        return FeedRead(events, int(rows[0][8]) if rows else None)

    async def _rows(self, statement: Select[Any], parameters: dict[str, Any]) -> Sequence[Any]:
        rows: Sequence[Any] = await self._run_core(statement, parameters, Result.all)
        return rows

    async def purge_before(self, cutoff: datetime) -> int:
        """Drop feed history committed before `cutoff` (task states, and PostgreSQL's
        commit numbers; the audit trail itself stays) and move the horizon past it.
        Returns the new horizon."""
        if self.dialect == "postgresql":
            newest = select(func.max(_COMMITS.c.seq)).where(_COMMITS.c.commit_time < cutoff)
            horizon = await self._scalar(newest)
            if horizon is not None:
                purged = select(_COMMITS.c.xid).where(_COMMITS.c.seq <= horizon)
                await self._drop_states(_EVENTS.c.xid.in_(purged))
                await self.session.exec(_COMMITS.delete().where(_COMMITS.c.seq <= horizon))
        else:
            newest = select(func.max(_EVENTS.c.id)).where(_EVENTS.c.event_time < cutoff)
            horizon = await self._scalar(newest)
            if horizon is not None:
                await self._drop_states(_EVENTS.c.id <= horizon)
        if horizon is not None:
            await self.session.exec(
                update(_HORIZON_TABLE)
                .where(_HORIZON_TABLE.c.id == 1, _HORIZON_TABLE.c.seq < horizon)
                .values(seq=horizon)
            )
        return int(await self._scalar(select(_HORIZON)) or 0)

    async def _drop_states(self, which: ColumnElement[bool]) -> None:
        await self.session.exec(
            update(_EVENTS).where(and_(which, _EVENTS.c.state.is_not(None))).values(state=null())
        )

    async def _scalar(self, statement: Select[Any]) -> Any:
        return await self._run_core(statement, {}, Result.scalar)
