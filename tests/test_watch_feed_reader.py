"""The process's change-feed reader: wake-ups, a lost listener, writes by other processes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from service.runtime.server import TaskServer, start_server
from service.settings import Settings
from service.storage import migrate
from service.storage.purge import purge
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import unique, wait_until
from tests.infra.service_process import service_process
from tests.watching import Watch, started

pb = task_service_pb2


async def _project(channel: grpc.aio.Channel) -> int:
    projects = project_service_pb2_grpc.ProjectServiceStub(channel)
    created = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(name=unique("r"))
    )
    project_id: int = created.id
    return project_id


async def _create(tasks: Any, project_id: int, title: str) -> resources_pb2.Task:
    created: resources_pb2.Task = await tasks.CreateTask(
        pb.CreateTaskRequest(task=resources_pb2.Task(project_id=project_id, title=title))
    )
    return created


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[tuple[TaskServer, grpc.aio.Channel]]:
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    running = await start_server(Settings(database_url=postgres_url, address="127.0.0.1:0"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, channel
    finally:
        await running.stop(grace=1)


async def test_a_lost_listening_connection_is_replaced_and_nothing_is_missed(pg, postgres_url):
    server, channel = pg
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    project_id = await _project(channel)
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project_id)))
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        listener = server.feed.listener_pid
        assert listener is not None
        killed = await admin.fetchval("SELECT pg_terminate_backend($1)", listener)
        assert killed
        # Committed while nobody listens: the reader catches up when it reconnects.
        created = [await _create(tasks, project_id, f"during {n}") for n in range(3)]
        changes = await watch.wait_for_changes(3)
        await watch.cancel()

        async def listening_again() -> bool:
            pid = server.feed.listener_pid
            if pid is None or pid == listener:
                return False
            name = await admin.fetchval(
                "SELECT application_name FROM pg_stat_activity WHERE pid = $1", pid
            )
            return bool(name == f"taskservice-feed-listener pid={os.getpid()}")

        async with asyncio.timeout(30):
            while not await listening_again():
                await asyncio.sleep(0.05)
    finally:
        await admin.close()
    assert [e.task.id for e in changes] == [t.id for t in created]


async def test_the_reader_reads_only_while_someone_watches(pg):
    server, channel = pg
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    project_id = await _project(channel)
    await wait_until(lambda: server.feed.watchers == 0)
    reads = server.feed.reads
    for n in range(5):
        await _create(tasks, project_id, f"unwatched {n}")
    await asyncio.sleep(0.3)
    assert server.feed.reads == reads, "no watcher: no reads"
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project_id)))
    created = await _create(tasks, project_id, "watched")
    [event] = await watch.wait_for_changes(1)
    await watch.cancel()
    assert event.task.id == created.id


@pytest.fixture
async def sqlite_file(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    return url


async def test_sqlite_watchers_see_writes_of_another_process_by_polling(
    sqlite_file: str, tmp_path: Path
):
    running = await start_server(
        Settings(database_url=sqlite_file, address="127.0.0.1:0", feed_poll_interval=0.1)
    )
    try:
        async with (
            service_process(
                "--database-url", sqlite_file, log_path=tmp_path / "other.log"
            ) as other,
            grpc.aio.insecure_channel(other.address) as other_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            project_id = await _project(other_channel)
            watch = await started(
                Watch(
                    task_service_pb2_grpc.TaskServiceStub(channel),
                    pb.WatchTasksRequest(project_id=project_id),
                )
            )
            writer = task_service_pb2_grpc.TaskServiceStub(other_channel)
            created = [await _create(writer, project_id, f"elsewhere {n}") for n in range(3)]
            changes = await watch.wait_for_changes(3)
            await watch.cancel()
    finally:
        await running.stop(grace=1)
    assert [e.task.id for e in changes] == [t.id for t in created]


async def test_history_purged_past_the_reader_ends_live_watches_as_expired(sqlite_file: str):
    """Events the reader had not read yet are purged: its watchers cannot continue
    exactly, so they end with OUT_OF_RANGE (CURSOR_EXPIRED) instead of skipping them."""
    quiet = {"feed_poll_interval": 3600.0}  # only wake-ups read: this test decides when
    watching = await start_server(
        Settings(database_url=sqlite_file, address="127.0.0.1:0", **quiet)
    )
    writing = await start_server(Settings(database_url=sqlite_file, address="127.0.0.1:0", **quiet))
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{watching.port}") as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{writing.port}") as writer_channel,
        ):
            project_id = await _project(writer_channel)
            watch = await started(
                Watch(
                    task_service_pb2_grpc.TaskServiceStub(channel),
                    pb.WatchTasksRequest(project_id=project_id),
                )
            )
            # Committed by another process (its commits wake only its own reader), then purged.
            await _create(task_service_pb2_grpc.TaskServiceStub(writer_channel), project_id, "lost")
            await purge(Settings(database_url=sqlite_file), feed_retention=timedelta(0))
            watching.feed.wake()
            end = await watch.ended()
    finally:
        await writing.stop(grace=1)
        await watching.stop(grace=1)
    assert (end.code, end.reason) == (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED")
    assert watch.changes == []
