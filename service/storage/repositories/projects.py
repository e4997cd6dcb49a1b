"""SQL for projects."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import col, select

from service.storage.errors import FailedPrecondition
from service.storage.filters import ProjectFilter
from service.storage.keyset import Ordering, Position
from service.storage.models import Project, Task
from service.storage.repositories.base import Page, Repository
from service.storage.repositories.task_counts import TaskCounts, live_task_counts
from service.storage.repositories.tasks import TaskRepository


class ProjectRepository(Repository[Project]):
    """Projects by id; a project with tasks cannot be deleted."""

    model = Project
    resource = "project"

    async def list_page(
        self, project_filter: ProjectFilter, ordering: Ordering, after: Position | None, limit: int
    ) -> Page[Project]:
        """One keyset page of the projects matching `project_filter`."""
        statement = select(Project)
        if project_filter.name_contains:
            statement = statement.where(
                self.contains_text(col(Project.name), project_filter.name_contains)
            )
        return await self.page(statement, ordering, after, limit)

    async def task_counts(self, project_ids: Sequence[int]) -> dict[int, TaskCounts]:
        """Each project's live tasks by status (one statement)."""
        return await live_task_counts(self, col(Task.project_id), project_ids)

    async def delete(self, entity: Project) -> None:
        """Delete a project without live tasks (its soft-deleted ones are purged with it)."""
        has_tasks = await self.session.exec(
            select(Task.id)
            .where(col(Task.project_id) == entity.id, col(Task.delete_time).is_(None))
            .limit(1)
        )
        if has_tasks.first() is not None:
            raise FailedPrecondition(
                "PROJECT_HAS_TASKS",
                f"project {entity.id} still has tasks; delete them first",
                project_id=entity.id,
            )
        await TaskRepository(self.session).purge_deleted(project_id=entity.id)
        await super().delete(entity)
