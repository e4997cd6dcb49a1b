"""SQL for workers."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import col, select

from service.storage.filters import WorkerFilter
from service.storage.keyset import Ordering, Position
from service.storage.models import Task, Worker
from service.storage.repositories.base import Page, Repository
from service.storage.repositories.task_counts import TaskCounts, live_task_counts


class WorkerRepository(Repository[Worker]):
    """Workers by id; deleting one unassigns its tasks (ON DELETE SET NULL)."""

    model = Worker
    resource = "worker"

    async def list_page(
        self, worker_filter: WorkerFilter, ordering: Ordering, after: Position | None, limit: int
    ) -> Page[Worker]:
        """One keyset page of the workers matching `worker_filter`."""
        statement = select(Worker)
        if worker_filter.email:
            # Stored trimmed and lower-cased: an equality on the unique index.
            statement = statement.where(col(Worker.email) == worker_filter.email)
        if worker_filter.name_contains:
            statement = statement.where(
                self.contains_text(col(Worker.name), worker_filter.name_contains)
            )
        return await self.page(statement, ordering, after, limit)

    async def task_counts(self, worker_ids: Sequence[int]) -> dict[int, TaskCounts]:
        """The live tasks assigned to each worker, by status (one statement)."""
        return await live_task_counts(self, col(Task.assignee_id), worker_ids)
