"""SQL for workers."""

from __future__ import annotations

from sqlmodel import select

from service.storage.keyset import Ordering, Position
from service.storage.models import Worker
from service.storage.repositories.base import Page, Repository


class WorkerRepository(Repository[Worker]):
    """Workers by id; deleting one unassigns its tasks (ON DELETE SET NULL)."""

    model = Worker
    resource = "worker"

    async def list_page(
        self, ordering: Ordering, after: Position | None, limit: int
    ) -> Page[Worker]:
        """One keyset page of workers."""
        return await self.page(select(Worker), ordering, after, limit)
