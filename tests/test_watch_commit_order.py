"""The change feed follows commit order on PostgreSQL, where ids and xids do not.

Adversarial interleavings, driven through the service's own write path (UnitOfWork and
the RPCs): a transaction that takes its audit id (or its xid) early and commits late.
SQLite has no such interleaving: its writers take turns for whole transactions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from service.runtime.server import TaskServer, start_server
from service.settings import Settings
from service.storage import migrate
from service.storage.audit_snapshots import task_snapshot
from service.storage.database import UnitOfWork
from service.storage.models import utc_now
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import create_task, unique
from tests.watching import UPDATED, Watch, started, summary

pb = task_service_pb2


@pytest.fixture
async def pg_server(postgres_url: str) -> AsyncIterator[tuple[TaskServer, Any]]:
    """A server on the run's PostgreSQL database, and a TaskService stub to it."""
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    running = await start_server(Settings(database_url=postgres_url, address="127.0.0.1:0"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, channel
    finally:
        await running.stop(grace=1)


async def _project(channel: Any) -> int:
    projects = project_service_pb2_grpc.ProjectServiceStub(channel)
    request = project_service_pb2.CreateProjectRequest(name=unique("order"))
    created: resources_pb2.Project = await projects.CreateProject(request)
    return created.id


async def _update_title(tasks: Any, task_id: int, title: str) -> resources_pb2.Task:
    request = pb.UpdateTaskRequest(
        task=resources_pb2.Task(id=task_id, title=title), update_mask={"paths": ["title"]}
    )
    updated: resources_pb2.Task = await tasks.UpdateTask(request)
    return updated


async def _retitle_in(uow: UnitOfWork, task_id: int, title: str) -> None:
    """UpdateTask's steps inside an open unit of work (lock, change, audit)."""
    task = await uow.tasks.get(task_id, for_update=True)
    before = task_snapshot(task)
    task.title, task.update_time = title, utc_now()
    await uow.tasks.save(task)
    uow.record("task", task_id, "update", before, task_snapshot(task))


async def _audit_rows(postgres_url: str, task_ids: list[int]) -> dict[int, tuple[int, int]]:
    """task id -> (audit id, xid) of its newest event."""
    connection = await _connect(postgres_url)
    try:
        rows = await connection.fetch(
            "SELECT DISTINCT ON (entity_id) entity_id, id, xid FROM audit_events "
            "WHERE entity_type = 'task' AND entity_id = ANY($1::bigint[]) "
            "ORDER BY entity_id, id DESC",
            task_ids,
        )
    finally:
        await connection.close()
    return {row["entity_id"]: (row["id"], row["xid"]) for row in rows}


async def _connect(url: str) -> asyncpg.Connection:
    """A plain connection to the test database, beside the server's."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return await asyncpg.connect(dsn)


async def _assert_resumes(tasks: Any, project_id: int, watch: Watch) -> None:
    """Resuming from every cursor seen gives exactly the rest: no skip, no duplicate."""
    for index, event in enumerate(watch.events):
        rest = summary(watch.events[index + 1 :])
        resumed = Watch(
            tasks, pb.WatchTasksRequest(project_id=project_id, start_cursor=event.cursor)
        )
        if rest:
            await resumed.wait_for_changes(len(rest))
        await asyncio.sleep(0.2)
        await resumed.cancel()
        assert summary(resumed.events) == rest, f"resumed after event {index}"


async def test_an_id_taken_early_and_committed_late_is_not_skipped(pg_server, postgres_url):
    """T1 writes (its audit row takes an id), T2 writes and commits, the watcher reads
    T2's event, T1 commits: the watcher still gets T1's event, after T2's."""
    server, channel = pg_server
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    project_id = await _project(channel)
    first = await create_task(tasks, project_id)
    second = await create_task(tasks, project_id)
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project_id)))

    async with UnitOfWork(server.deps.session_factory, "t1") as t1:
        await _retitle_in(t1, first.id, "T1")
        await t1.audit.write_pending()  # T1's event now holds its audit id, uncommitted
        t2 = await _update_title(tasks, second.id, "T2")  # T2 commits
        [seen] = await watch.wait_for_changes(1)  # the watcher reads T2's event
        assert seen.task.id == second.id
        await t1.commit()
    changes = await watch.wait_for_changes(2)
    await watch.cancel()

    assert [(e.task.id, e.task.title) for e in changes] == [(second.id, "T2"), (first.id, "T1")]
    assert changes[0].task.etag == t2.etag
    ids = await _audit_rows(postgres_url, [first.id, second.id])
    assert ids[first.id][0] < ids[second.id][0], "a cursor by audit id would have skipped T1"
    await _assert_resumes(tasks, project_id, watch)


async def test_one_tasks_events_follow_commit_order_not_xid_order(pg_server, postgres_url):
    """T_a takes its xid first (locking another task, as DeleteTask with force locks the
    parent before a subtask); T_b updates the subtask and commits; T_a then updates the
    subtask and commits. The subtask's events arrive as committed: T_b's, then T_a's,
    although T_a's xid is the smaller (an xid watermark would deliver them the other way)."""
    server, channel = pg_server
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    project_id = await _project(channel)
    parent = await create_task(tasks, project_id)
    child = await create_task(tasks, project_id, parent_task_id=parent.id)
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project_id)))

    async with UnitOfWork(server.deps.session_factory, "a") as t_a:
        await t_a.tasks.get(parent.id, for_update=True)  # T_a's xid is taken here
        await _update_title(tasks, child.id, "by T_b")  # T_b: a later xid, commits first
        await watch.wait_for_changes(1)
        await _retitle_in(t_a, child.id, "by T_a")
        await t_a.commit()
    changes = await watch.wait_for_changes(2)
    await watch.cancel()

    assert [(e.type, e.task.id, e.task.title) for e in changes] == [
        (UPDATED, child.id, "by T_b"),
        (UPDATED, child.id, "by T_a"),
    ]
    assert changes[1].task.etag > changes[0].task.etag
    rows = await _audit_rows(postgres_url, [child.id])
    connection = await _connect(postgres_url)
    try:
        xids = await connection.fetch(
            "SELECT xid FROM audit_events WHERE entity_type = 'task' AND entity_id = $1 "
            "ORDER BY id DESC LIMIT 2",
            child.id,
        )
    finally:
        await connection.close()
    t_a_xid, t_b_xid = (row["xid"] for row in xids)
    assert rows[child.id][1] == t_a_xid
    assert t_a_xid < t_b_xid, "xid order is not commit order here"
    await _assert_resumes(tasks, project_id, watch)


async def test_a_long_transaction_does_not_hold_back_other_commits(pg_server):
    """Commit numbers are taken at COMMIT: an open transaction with an early audit id
    delays nobody's events (a watermark on the oldest running transaction would)."""
    server, channel = pg_server
    tasks = task_service_pb2_grpc.TaskServiceStub(channel)
    project_id = await _project(channel)
    held = await create_task(tasks, project_id)
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project_id)))
    async with UnitOfWork(server.deps.session_factory, "slow") as slow:
        await _retitle_in(slow, held.id, "slow")
        await slow.audit.write_pending()
        for index in range(3):
            await create_task(tasks, project_id, title=f"meanwhile {index}")
        meanwhile = await watch.wait_for_changes(3, timeout=5)
        await slow.commit()
    assert [e.task.title for e in meanwhile] == [f"meanwhile {index}" for index in range(3)]
    [*_, last] = await watch.wait_for_changes(4)
    await watch.cancel()
    assert last.task.title == "slow"
