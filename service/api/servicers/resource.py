"""The standard methods (AIP-131..135) shared by simple resources: projects and workers.

One implementation of create/get/list/update/delete, parameterised by the
resource's repository, mapping and audit snapshot, so the two servicers stay
one-liners per RPC and cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from service.api.idempotency import create_once
from service.api.mapping.task_counts import task_counts_to_message
from service.api.pagination import Pagination
from service.api.servicers.dependencies import Dependencies
from service.api.validation import ViewEnum, Violations, check_enum, check_id, require_id
from service.storage.audit_snapshots import Snapshot
from service.storage.database import UnitOfWork
from service.storage.etags import check_etag
from service.storage.models import utc_now
from service.storage.repositories.base import Page
from service.storage.repositories.task_counts import TaskCounts

Entity = TypeVar("Entity")
Resource = TypeVar("Resource", bound=Message)
Context = Any  # grpc.aio.ServicerContext


@dataclass(frozen=True)
class ResourceKind(Generic[Entity, Resource]):
    """Everything the standard methods need to know about one resource type."""

    name: str  # "project": audit entity type and etag error wording
    message_type: type[Resource]
    repository: Callable[[UnitOfWork], Any]
    to_message: Callable[[Entity], Resource]
    from_message: Callable[[Resource, datetime], Entity]
    apply_update: Callable[[Entity, Resource, Set[str], datetime], None]
    snapshot: Callable[[Entity], Snapshot]
    listing: Pagination
    # List filters: the request's violations, and the storage filter it asks for.
    check_list: Callable[[Any], Violations]
    list_filter: Callable[[Any], Any]
    # Views: the enum, its FULL value, and the counts of live tasks by status FULL adds.
    view_enum: ViewEnum
    full_view: int
    task_counts: Callable[[UnitOfWork, Sequence[int]], Awaitable[dict[int, TaskCounts]]]
    before_delete: Callable[[UnitOfWork, int], Awaitable[None]] | None = None


class StandardMethods(Generic[Entity, Resource]):
    """Create, Get, List, Update and Delete of one resource kind."""

    def __init__(self, deps: Dependencies, kind: ResourceKind[Entity, Resource]) -> None:
        self.deps = deps
        self.kind = kind

    async def create(
        self, method: str, request: Message, resource: Resource, context: Context
    ) -> Resource:
        """Insert `resource` once per request_id, audited."""
        kind = self.kind
        async with self.deps.unit_of_work(context) as uow:

            async def create() -> Resource:
                entity = kind.from_message(resource, utc_now())
                await kind.repository(uow).add(entity)
                uow.record(kind.name, entity.id, "create", None, kind.snapshot(entity))  # type: ignore[attr-defined]
                return kind.to_message(entity)

            return await create_once(uow, method, request, kind.message_type, create)

    async def get(self, entity_id: int, view: int, context: Context) -> Resource:
        """One resource by id, in the requested view."""
        violations = Violations()
        check_id(violations, "id", entity_id)
        full = self._is_full(view, violations)
        violations.raise_if_any()

        async def read(uow: UnitOfWork) -> tuple[Entity, dict[int, TaskCounts] | None]:
            entity = await self.kind.repository(uow).get(entity_id)
            counts = await self.kind.task_counts(uow, [entity_id]) if full else None
            return entity, counts

        entity, counts = await self.deps.read(context, read)
        return self._message(entity, counts)

    async def list(self, request: Message, context: Context) -> tuple[list[Resource], str]:
        """One page of resources in the requested view, and the next page token."""
        listing, tokens = self.kind.listing, self.deps.page_tokens
        violations = self.kind.check_list(request)
        full = self._is_full(request.view, violations)  # type: ignore[attr-defined]
        page_request = listing.read(request, tokens, violations)
        list_filter = self.kind.list_filter(request)

        async def read(uow: UnitOfWork) -> tuple[Page[Entity], dict[int, TaskCounts] | None]:
            page: Page[Entity] = await self.kind.repository(uow).list_page(
                list_filter, page_request.ordering, page_request.after, page_request.size
            )
            ids = [entity.id for entity in page.items]  # type: ignore[attr-defined]
            return page, await self.kind.task_counts(uow, ids) if full else None

        (page, counts), read_at = await self.deps.read_at(context, read, page_request.read_at)
        messages = [self._message(entity, counts) for entity in page.items]
        return messages, listing.token_after(tokens, page_request, page.next_position, read_at)

    def _is_full(self, view: int, violations: Violations) -> bool:
        check_enum(violations, "view", view, self.kind.view_enum, allow_unspecified=True)
        return view == self.kind.full_view

    def _message(self, entity: Entity, counts: dict[int, TaskCounts] | None) -> Resource:
        """The API form of an entity; with the FULL view's counts when given."""
        message = self.kind.to_message(entity)
        if counts is not None:
            entity_counts = counts.get(entity.id, {})  # type: ignore[attr-defined]
            message.task_counts.CopyFrom(task_counts_to_message(entity_counts))  # type: ignore[attr-defined]
        return message

    async def update(self, resource: Resource, fields: Set[str], context: Context) -> Resource:
        """Apply the masked fields, conditional on the etag when one is sent."""
        kind = self.kind
        entity_id: int = resource.id  # type: ignore[attr-defined]
        async with self.deps.unit_of_work(context) as uow:
            entity = await kind.repository(uow).get(entity_id, for_update=True)
            check_etag(entity, resource.etag, kind.name)  # type: ignore[attr-defined]
            if fields:
                before = kind.snapshot(entity)
                kind.apply_update(entity, resource, fields, utc_now())
                await kind.repository(uow).save(entity)
                uow.record(kind.name, entity_id, "update", before, kind.snapshot(entity))
                await uow.commit()
        return kind.to_message(entity)

    async def delete(self, entity_id: int, etag: str, context: Context) -> None:
        """Delete (hard), conditional on the etag when one is sent, audited."""
        require_id("id", entity_id)
        kind = self.kind
        async with self.deps.unit_of_work(context) as uow:
            entity = await kind.repository(uow).get(entity_id, for_update=True)
            check_etag(entity, etag, kind.name)
            if kind.before_delete is not None:
                await kind.before_delete(uow, entity_id)
            before = kind.snapshot(entity)
            await kind.repository(uow).delete(entity)
            uow.record(kind.name, entity_id, "delete", before, None)
            await uow.commit()
