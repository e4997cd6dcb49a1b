"""Bulk test data written straight through a session factory (fast set-up)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from service.runtime.server import TaskServer
from service.settings import Settings
from service.storage.database import SessionFactory, create_engine, make_session_factory
from service.storage.models import Project, Task, utc_now


async def seed_tasks(server: TaskServer, project_id: int, count: int, **fields: Any) -> list[int]:
    """Insert `count` tasks into `project_id` with distinct create times; return their ids."""
    return await _insert_tasks(server.deps.session_factory, project_id, count, **fields)


async def seed_tasks_at(database_url: str, project_id: int, count: int, **fields: Any) -> list[int]:
    """seed_tasks for a server in another process: through an engine of this one's own."""
    engine = create_engine(Settings(database_url=database_url))
    try:
        return await _insert_tasks(make_session_factory(engine), project_id, count, **fields)
    finally:
        await engine.dispose()


async def _insert_tasks(
    factory: SessionFactory, project_id: int, count: int, **fields: Any
) -> list[int]:
    start = utc_now()
    entities = [
        Task(
            project_id=project_id,
            title=fields.get("title", f"seeded {index:05d}"),
            description=fields.get("description", ""),
            tags=list(fields.get("tags", [])),
            create_time=start + timedelta(microseconds=index),
            update_time=start + timedelta(microseconds=index),
        )
        for index in range(count)
    ]
    async with factory() as session:
        session.add_all(entities)
        await session.commit()
    return [entity.id for entity in entities if entity.id is not None]


async def seed_project_at(database_url: str, name: str, tasks: int = 0) -> int:
    """A new project named `name` with `tasks` seeded tasks, written without a server."""
    engine = create_engine(Settings(database_url=database_url))
    try:
        factory = make_session_factory(engine)
        now = utc_now()
        project = Project(name=name, create_time=now, update_time=now)
        async with factory() as session:
            session.add(project)
            await session.commit()
        assert project.id is not None
        await _insert_tasks(factory, project.id, tasks)
        return project.id
    finally:
        await engine.dispose()
