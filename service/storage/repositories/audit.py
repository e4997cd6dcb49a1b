"""SQL for the audit trail: one row per committed mutation, in the same transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.storage.audit_snapshots import Snapshot, changes
from service.storage.feed_events import task_state
from service.storage.keyset import Ordering, Position
from service.storage.models import AuditEvent, Task, utc_now
from service.storage.repositories.base import Page, Repository

# An audit row's values; `event_values` gives all but entity_id.
AuditValues = dict[str, Any]
# The one INSERT of audit rows (TaskRepository's create statement embeds it too).
INSERT_EVENTS = insert(AuditEvent.__table__)  # type: ignore[attr-defined]


# The keys event_values gives, in its order.
EVENT_KEYS = ("entity_type", "action", "actor", "event_time", "changes", "state")


def event_values(
    actor: str, entity_type: str, action: str, before: Snapshot | None, after: Snapshot | None
) -> AuditValues:
    """The values of one audit event, all but the id of the entity it is about.

    `state` (a task's columns after the change, for the change feed) is None here:
    whoever writes a task event fills it in (write_pending, TaskRepository.create).
    """
    values = (entity_type, action, actor, utc_now(), changes(before, after), None)
    return dict(zip(EVENT_KEYS, values, strict=True))


class AuditRepository(Repository[AuditEvent]):
    """Appends audit events for the unit of work's actor; lists an entity's history."""

    model = AuditEvent
    resource = "audit_event"

    def __init__(self, session: AsyncSession) -> None:
        super().__init__(session)
        self._pending: list[dict[str, Any]] = []

    def record(
        self,
        actor: str,
        entity_type: str,
        entity_id: int | None,
        action: str,
        before: Snapshot | None,
        after: Snapshot | None,
    ) -> None:
        """Queue an event; `write_pending` inserts it in the unit of work's transaction."""
        assert entity_id is not None
        event = event_values(actor, entity_type, action, before, after)
        self._pending.append({**event, "entity_id": entity_id})

    async def write_pending(self) -> None:
        """Insert the queued events: one Core INSERT, however many."""
        if not self._pending:
            return
        events, self._pending = self._pending, []
        if any(event["entity_type"] == "task" for event in events):
            await self._add_task_states(events)
        await self.execute_core(INSERT_EVENTS, events)

    async def _add_task_states(self, events: list[dict[str, Any]]) -> None:
        """Each task event's task as it will be committed, for the change feed.

        Flushed first, so version counters are bumped; the tasks are in the session
        already (they were loaded to be changed), so `get` costs no query.
        """
        await self.session.flush()
        for event in events:
            if event["entity_type"] == "task":
                task = await self.session.get(Task, event["entity_id"])
                assert task is not None, "a task event for a task not in the session"
                event["state"] = task_state(task)

    async def history(
        self,
        entity_type: str,
        entity_id: int,
        ordering: Ordering,
        after: Position | None,
        limit: int,
    ) -> Page[AuditEvent]:
        """One page of an entity's events."""
        statement = select(AuditEvent).where(
            col(AuditEvent.entity_type) == entity_type, col(AuditEvent.entity_id) == entity_id
        )
        return await self.page(statement, ordering, after, limit)
