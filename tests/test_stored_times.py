"""Stored times come back timezone-aware UTC, whatever the database session's time zone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.runtime.server import TaskServer
from service.storage.database import UnitOfWork, make_session_factory
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from tests.conftest import create_task


@pytest.fixture
async def new_york_engine(server: TaskServer, database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine whose sessions run in another time zone (PostgreSQL: TimeZone setting)."""
    if make_url(database_url).get_backend_name() == "postgresql":
        connect_args = {"server_settings": {"timezone": "America/New_York"}}
    else:
        connect_args = {}  # SQLite stores naive UTC text; there is no session time zone
    engine = create_async_engine(database_url, connect_args=connect_args)
    yield engine
    await engine.dispose()


async def test_rows_and_entities_read_times_as_utc(
    tasks: task_service_pb2_grpc.TaskServiceStub,
    project: resources_pb2.Project,
    new_york_engine: AsyncEngine,
) -> None:
    created = await create_task(tasks, project.id)
    expected = created.create_time.ToDatetime(tzinfo=UTC)
    async with UnitOfWork(make_session_factory(new_york_engine), read_only=True) as uow:
        row = await uow.tasks.get_row(created.id)
        entity = await uow.tasks.get(created.id)
    for value in (row[9], entity.create_time):
        assert isinstance(value, datetime)
        assert value.utcoffset() == timedelta(0)
        assert value == expected
