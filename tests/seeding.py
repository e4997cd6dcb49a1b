"""Bulk test data written straight through the server's session factory (fast set-up)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from service.runtime.server import TaskServer
from service.storage.models import Task, utc_now


async def seed_tasks(server: TaskServer, project_id: int, count: int, **fields: Any) -> list[int]:
    """Insert `count` tasks into `project_id` with distinct create times; return their ids."""
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
    async with server.deps.session_factory() as session:
        session.add_all(entities)
        await session.commit()
    return [entity.id for entity in entities if entity.id is not None]
