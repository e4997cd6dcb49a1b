"""The audit history of one task, project or worker, a page at a time (List*Events)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from service.api.mapping.audit import event_to_message
from service.api.pagination import Pagination
from service.api.servicers.dependencies import Dependencies
from service.api.validation import Violations, check_id
from service.storage.database import UnitOfWork
from service.storage.keyset import int_field
from service.storage.models import AuditEvent
from service.storage.repositories.base import Page, Repository
from taskmanager.v1 import resources_pb2

Context = Any  # grpc.aio.ServicerContext


@dataclass(frozen=True)
class History:
    """How one List*Events RPC reads one resource type's audit trail."""

    method: str  # "ListTaskEvents": page tokens are bound to it
    entity_type: str  # "task", as recorded in audit_events
    repository: Callable[[UnitOfWork], Repository[Any]]
    listing: Pagination = field(init=False)

    def __post_init__(self) -> None:
        # Oldest first, by event id.
        listing = Pagination(
            method=self.method,
            order_fields={"id": int_field(AuditEvent.id)},
            default_order="id",
            default_size=50,
            max_size=1000,
        )
        object.__setattr__(self, "listing", listing)

    async def page(
        self, deps: Dependencies, request: Message, context: Context
    ) -> tuple[list[resources_pb2.AuditEvent], str]:
        """One page of the events of the entity `request.<entity_type>_id` and the next token.

        The history outlives the entity (projects and workers are deleted for good, tasks
        purged): NOT_FOUND only when there is neither the entity nor any event of it.
        """
        id_field = f"{self.entity_type}_id"
        entity_id: int = getattr(request, id_field)
        violations = Violations()
        check_id(violations, id_field, entity_id)
        listing = self.listing
        page_request = listing.read(request, deps.page_tokens, violations)

        async def read(uow: UnitOfWork) -> Page[AuditEvent]:
            page = await uow.audit.history(
                self.entity_type,
                entity_id,
                page_request.ordering,
                page_request.after,
                page_request.size,
            )
            if not page.items and page_request.after is None:
                repository = self.repository(uow)
                if not await repository.exists(entity_id):
                    raise repository.not_found(entity_id)
            return page

        page, read_at = await deps.read_at(context, read, page_request.read_at)
        events = [event_to_message(event) for event in page.items]
        return events, listing.token_after(
            deps.page_tokens, page_request, page.next_position, read_at
        )


TASK_HISTORY = History("ListTaskEvents", "task", lambda uow: uow.tasks)
PROJECT_HISTORY = History("ListProjectEvents", "project", lambda uow: uow.projects)
WORKER_HISTORY = History("ListWorkerEvents", "worker", lambda uow: uow.workers)
