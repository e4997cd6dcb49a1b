"""WatchTasks behind a transaction-pooling PgBouncer: the server's queries go through the
pooler, its one LISTEN session goes to PostgreSQL directly (session_database_url)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from service.runtime.server import TaskServer, start_server
from service.storage import migrate
from service.storage.change_feed import CHANNEL, LISTENER_NAME
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import _create_database, drop_database, server_settings, unique
from tests.infra.pgbouncer import PgBouncer
from tests.watching import (
    BOOKMARK,
    Watch,
    assert_each_change_once_in_commit_order,
    started,
    summary,
)

pb = task_service_pb2
WRITERS = 8
WRITES_EACH = 6


@pytest.fixture
async def pooled_feed_server(pgbouncer: PgBouncer) -> AsyncIterator[tuple[TaskServer, str]]:
    """A server on a database of its own through PgBouncer (database_pooler=transaction),
    its session URL straight to PostgreSQL; no safety re-reads during the test, so every
    wake-up must come from NOTIFY on the direct LISTEN session."""
    direct_url, name = await _create_database("watch_pooled")
    await asyncio.to_thread(migrate.upgrade, direct_url)
    settings = server_settings(
        pgbouncer.url(name),
        database_pooler="transaction",
        session_database_url=direct_url,
        feed_recheck_interval=3600,
    )
    running = await start_server(settings)
    try:
        yield running, direct_url
    finally:
        await running.stop(grace=1)
        await drop_database(name)


async def _listening_sessions(direct_url: str) -> list[asyncpg.Record]:
    """PostgreSQL backends LISTENing on the feed's channel, as PostgreSQL sees them."""
    dsn = direct_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await connection.fetch(
            "SELECT pid, application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND query = $1",
            f'LISTEN "{CHANNEL}"',
        )
        return rows
    finally:
        await connection.close()


async def test_watchers_get_writes_made_through_the_pooler_in_commit_order_and_resume(
    pooled_feed_server: tuple[TaskServer, str],
) -> None:
    running, direct_url = pooled_feed_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        project = await project_service_pb2_grpc.ProjectServiceStub(channel).CreateProject(
            project_service_pb2.CreateProjectRequest(
                project=resources_pb2.Project(name=unique("pooled-watch"))
            )
        )
        request = pb.WatchTasksRequest(project_id=project.id)
        watch = await started(Watch(tasks, request))

        # The listener is a direct session: PostgreSQL shows it LISTENing, under its name.
        [listener] = await _listening_sessions(direct_url)
        assert listener["pid"] == running.feed.listener_pid
        assert listener["application_name"].startswith(LISTENER_NAME)

        created = [
            await tasks.CreateTask(
                pb.CreateTaskRequest(task=resources_pb2.Task(project_id=project.id, title=t))
            )
            for t in ("a", "b", "c")
        ]

        async def writer(index: int) -> None:
            for round_ in range(WRITES_EACH):
                task = created[(index + round_) % len(created)]
                await tasks.UpdateTask(
                    pb.UpdateTaskRequest(
                        task=resources_pb2.Task(id=task.id, title=f"w{index}-{round_}"),
                        update_mask={"paths": ["title"]},
                    )
                )

        await asyncio.gather(*(writer(i) for i in range(WRITERS)))
        total = len(created) + WRITERS * WRITES_EACH
        changes = await watch.wait_for_changes(total)
        assert len(changes) == total
        assert_each_change_once_in_commit_order(watch.events, consecutive=True)
        final = {t.id: t for t in await _current(tasks, [t.id for t in created])}
        assert {e.task.id: e.task for e in changes} == final, "the last event is the row"

        # Resume from a cursor in the middle: exactly the changes after it, in order.
        cut = total // 2
        resumed = Watch(
            tasks, pb.WatchTasksRequest(project_id=project.id, start_cursor=changes[cut].cursor)
        )
        assert summary(await resumed.wait_for_changes(total - cut - 1)) == summary(
            changes[cut + 1 :]
        )
        deleted = await tasks.DeleteTask(pb.DeleteTaskRequest(id=created[0].id))
        [*_, last] = await resumed.wait_for_changes(total - cut)
        assert (last.task.id, last.task.etag) == (deleted.id, deleted.etag)
        await resumed.cancel()
        await watch.cancel()
    assert all(e.cursor for e in changes)
    assert [e.type for e in watch.events[:1]] == [BOOKMARK]


async def _current(tasks: Any, ids: list[int]) -> list[resources_pb2.Task]:
    return [await tasks.GetTask(pb.GetTaskRequest(id=task_id)) for task_id in ids]
