"""SQL for the audit trail: one row per committed mutation, in the same transaction."""

from __future__ import annotations

from sqlmodel import col, select

from service.mapping.audit import Snapshot, changes
from service.models import AuditEvent, utc_now
from service.pagination import Ordering, Position
from service.repositories.base import Page, Repository


class AuditRepository(Repository[AuditEvent]):
    """Appends audit events for the unit of work's actor; lists an entity's history."""

    model = AuditEvent
    resource = "audit_event"

    def record(
        self,
        actor: str,
        entity_type: str,
        entity_id: int | None,
        action: str,
        before: Snapshot | None,
        after: Snapshot | None,
    ) -> None:
        """Add an event; it is written with the unit of work's commit (or not at all)."""
        assert entity_id is not None
        self.session.add(
            AuditEvent(
                entity_type=entity_type,
                entity_id=entity_id,
                action=action,
                actor=actor,
                event_time=utc_now(),
                changes=changes(before, after),
            )
        )

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
