"""The standard methods (AIP-131..135) shared by simple resources: projects and workers.

One implementation of create/get/list/update/delete, parameterised by the
resource's repository, mapping and audit snapshot, so the two servicers stay
one-liners per RPC and cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from service.api.idempotency import create_once
from service.api.pagination import Pagination
from service.api.servicers.dependencies import Dependencies
from service.api.validation import Violations, require_id
from service.storage.audit_snapshots import Snapshot
from service.storage.database import UnitOfWork
from service.storage.etags import check_etag
from service.storage.models import utc_now
from service.storage.repositories.base import Page

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

    async def get(self, entity_id: int, context: Context) -> Resource:
        """One resource by id."""
        require_id("id", entity_id)
        entity = await self.deps.read(context, lambda uow: self.kind.repository(uow).get(entity_id))
        return self.kind.to_message(entity)

    async def list(self, request: Message, context: Context) -> tuple[list[Resource], str]:
        """One page of resources and the next page token."""
        listing, tokens = self.kind.listing, self.deps.page_tokens
        page_request = listing.read(request, tokens, Violations())

        async def read(uow: UnitOfWork) -> Page[Entity]:
            page: Page[Entity] = await self.kind.repository(uow).list_page(
                page_request.ordering, page_request.after, page_request.size
            )
            return page

        page, read_at = await self.deps.read_at(context, read, page_request.read_at)
        messages = [self.kind.to_message(entity) for entity in page.items]
        return messages, listing.token_after(tokens, page_request, page.next_position, read_at)

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
