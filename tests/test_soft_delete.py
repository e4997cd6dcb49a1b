"""Soft delete (AIP-164): DeleteTask hides a task, UndeleteTask brings it (and its subtree) back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from service.runtime.server import start_server
from service.settings import Settings
from service.storage import migrate
from taskmanager.v1 import project_service_pb2_grpc, resources_pb2, task_service_pb2_grpc
from tests.conftest import create_task
from tests.rpc_errors import expect_failure
from tests.safe_writes import (
    DEADLINE,
    MISSING_ID,
    Tasks,
    delete_task,
    get_task,
    list_task_ids,
    list_tasks,
    new_project,
    stream_task_ids,
    undelete_task,
    update_task,
    update_task_call,
)

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def _tree(tasks: Tasks, project_id: int) -> dict[str, resources_pb2.Task]:
    """root -> (child -> grandchild, sibling)."""
    root = await create_task(tasks, project_id, title="root")
    child = await create_task(tasks, project_id, title="child", parent_task_id=root.id)
    grandchild = await create_task(tasks, project_id, title="grandchild", parent_task_id=child.id)
    sibling = await create_task(tasks, project_id, title="sibling", parent_task_id=root.id)
    return {"root": root, "child": child, "grandchild": grandchild, "sibling": sibling}


# --- delete --------------------------------------------------------------------------------


async def test_delete_task_sets_delete_time_and_returns_the_task(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, title="doomed", tags=["t"])

    deleted = await delete_task(tasks, created.id)

    assert deleted.HasField("delete_time")
    assert deleted.delete_time.ToNanoseconds() >= created.create_time.ToNanoseconds()
    for name in ("id", "project_id", "title", "tags", "status", "priority", "create_time"):
        assert getattr(deleted, name) == getattr(created, name), name


async def test_get_task_still_returns_a_deleted_task_with_its_delete_time(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    deleted = await delete_task(tasks, created.id)

    assert await get_task(tasks, created.id) == deleted


async def test_list_tasks_leaves_deleted_tasks_out_unless_show_deleted(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    kept = await create_task(tasks, project.id)
    gone = await create_task(tasks, project.id)
    await delete_task(tasks, gone.id)

    assert await list_task_ids(tasks, project.id) == {kept.id}
    assert await list_task_ids(tasks, project.id, show_deleted=True) == {kept.id, gone.id}


async def test_stream_tasks_leaves_deleted_tasks_out_unless_show_deleted(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    kept = [await create_task(tasks, project.id) for _ in range(3)]
    gone = [await create_task(tasks, project.id) for _ in range(2)]
    for task in gone:
        await delete_task(tasks, task.id)

    assert await stream_task_ids(tasks, project.id) == {t.id for t in kept}
    assert await stream_task_ids(tasks, project.id, show_deleted=True) == {
        t.id for t in kept + gone
    }


async def test_deleting_a_deleted_task_is_not_found(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    deleted = await delete_task(tasks, created.id)

    failure = await expect_failure(delete_task(tasks, created.id), grpc.StatusCode.NOT_FOUND)

    assert failure.info.metadata["task_id"] == str(created.id)
    assert await get_task(tasks, created.id) == deleted  # delete_time is not moved


async def test_deleting_or_undeleting_an_unknown_task_is_not_found(tasks: Tasks) -> None:
    await expect_failure(delete_task(tasks, MISSING_ID), grpc.StatusCode.NOT_FOUND)
    await expect_failure(undelete_task(tasks, MISSING_ID), grpc.StatusCode.NOT_FOUND)


# --- undelete ------------------------------------------------------------------------------


async def test_undelete_task_restores_it(tasks: Tasks, project: resources_pb2.Project) -> None:
    created = await create_task(tasks, project.id, title="back again")
    await delete_task(tasks, created.id)

    restored = await undelete_task(tasks, created.id)

    assert not restored.HasField("delete_time")
    assert restored.title == "back again"
    assert await get_task(tasks, created.id) == restored
    assert await list_task_ids(tasks, project.id) == {created.id}
    assert await stream_task_ids(tasks, project.id) == {created.id}


async def test_undeleting_a_live_task_is_already_exists(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    await expect_failure(undelete_task(tasks, created.id), grpc.StatusCode.ALREADY_EXISTS)

    assert await get_task(tasks, created.id) == created


async def test_a_task_can_be_deleted_and_undeleted_again_and_again(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    for _ in range(3):
        assert (await delete_task(tasks, created.id)).HasField("delete_time")
        assert not (await undelete_task(tasks, created.id)).HasField("delete_time")

    assert await list_task_ids(tasks, project.id) == {created.id}


# --- subtasks ------------------------------------------------------------------------------


async def test_deleting_a_task_with_live_subtasks_fails_precondition_and_deletes_nothing(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    tree = await _tree(tasks, project.id)

    await expect_failure(delete_task(tasks, tree["root"].id), FAILED_PRECONDITION)
    await expect_failure(delete_task(tasks, tree["child"].id), FAILED_PRECONDITION)

    assert await list_task_ids(tasks, project.id) == {t.id for t in tree.values()}
    for task in tree.values():
        assert await get_task(tasks, task.id) == task


async def test_deleted_subtasks_do_not_block_deleting_their_parent(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    parent = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=parent.id)
    await delete_task(tasks, child.id)

    deleted = await delete_task(tasks, parent.id)

    assert deleted.HasField("delete_time")


async def test_force_soft_deletes_the_whole_subtree_in_one_go(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    outside = await create_task(tasks, project.id, title="not in the tree")
    tree = await _tree(tasks, project.id)

    deleted = await delete_task(tasks, tree["root"].id, force=True)

    members = [await get_task(tasks, t.id) for t in tree.values()]
    assert all(member.HasField("delete_time") for member in members)
    # One transaction, one instant: every member carries the root's delete_time.
    assert {member.delete_time.ToNanoseconds() for member in members} == {
        deleted.delete_time.ToNanoseconds()
    }
    assert await list_task_ids(tasks, project.id) == {outside.id}
    assert await list_task_ids(tasks, project.id, show_deleted=True) == {
        outside.id,
        *(t.id for t in tree.values()),
    }


async def test_force_on_a_middle_task_deletes_its_subtree_only(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    tree = await _tree(tasks, project.id)

    await delete_task(tasks, tree["child"].id, force=True)

    assert await list_task_ids(tasks, project.id) == {tree["root"].id, tree["sibling"].id}


async def test_undeleting_the_root_restores_the_tasks_deleted_with_it(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    tree = await _tree(tasks, project.id)
    await delete_task(tasks, tree["root"].id, force=True)

    restored = await undelete_task(tasks, tree["root"].id)

    assert not restored.HasField("delete_time")
    assert await list_task_ids(tasks, project.id) == {t.id for t in tree.values()}
    for task in tree.values():
        assert not (await get_task(tasks, task.id)).HasField("delete_time")


async def test_undeleting_the_root_leaves_a_subtask_deleted_separately_before(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    tree = await _tree(tasks, project.id)
    separately = await delete_task(tasks, tree["sibling"].id)
    await delete_task(tasks, tree["root"].id, force=True)

    await undelete_task(tasks, tree["root"].id)

    assert await list_task_ids(tasks, project.id) == {
        tree["root"].id,
        tree["child"].id,
        tree["grandchild"].id,
    }
    assert await get_task(tasks, tree["sibling"].id) == separately
    # ...which can still be restored on its own.
    await undelete_task(tasks, tree["sibling"].id)
    assert await list_task_ids(tasks, project.id) == {t.id for t in tree.values()}


async def test_a_subtask_cannot_be_undeleted_while_its_parent_is_deleted(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    tree = await _tree(tasks, project.id)
    await delete_task(tasks, tree["root"].id, force=True)

    await expect_failure(undelete_task(tasks, tree["child"].id), FAILED_PRECONDITION)

    assert await list_task_ids(tasks, project.id) == set()


# --- a deleted task is read-only, and no parent for new tasks --------------------------------


async def test_updating_a_deleted_task_fails_precondition_task_deleted(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    deleted = await delete_task(tasks, created.id)

    failure = await expect_failure(
        update_task_call(tasks, resources_pb2.Task(id=created.id, title="zombie"), ["title"]),
        FAILED_PRECONDITION,
    )

    assert failure.info.reason == "TASK_DELETED"
    assert await get_task(tasks, created.id) == deleted


async def test_creating_a_task_under_a_deleted_parent_fails_precondition(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    parent = await create_task(tasks, project.id)
    await delete_task(tasks, parent.id)

    await expect_failure(
        create_task(tasks, project.id, parent_task_id=parent.id), FAILED_PRECONDITION
    )

    assert await list_task_ids(tasks, project.id, show_deleted=True) == {parent.id}


async def test_moving_a_task_under_a_deleted_parent_fails_precondition(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    parent = await create_task(tasks, project.id)
    task = await create_task(tasks, project.id)
    await delete_task(tasks, parent.id)

    await expect_failure(
        update_task_call(
            tasks, resources_pb2.Task(id=task.id, parent_task_id=parent.id), ["parent_task_id"]
        ),
        FAILED_PRECONDITION,
    )

    assert await get_task(tasks, task.id) == task


async def test_an_undeleted_task_can_be_updated_again(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    await delete_task(tasks, created.id)
    await undelete_task(tasks, created.id)

    updated = await update_task(tasks, resources_pb2.Task(id=created.id, title="alive"), ["title"])

    assert updated.title == "alive"


# --- a parent deleted while a subtask is being added ---------------------------------------

RACES = 30


async def _live_under_deleted(tasks: Tasks, project_id: int) -> list[int]:
    """Live tasks whose parent is soft-deleted (there must be none)."""
    everything = {t.id: t for t in await list_tasks(tasks, project_id, show_deleted=True)}
    return [
        task.id
        for task in everything.values()
        if not task.HasField("delete_time")
        and task.HasField("parent_task_id")
        and everything[task.parent_task_id].HasField("delete_time")
    ]


async def _settle(call: Awaitable[object]) -> grpc.StatusCode | None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return None


def _move_under(tasks: Tasks, task_id: int, parent_id: int) -> Awaitable[object]:
    return update_task_call(
        tasks, resources_pb2.Task(id=task_id, parent_task_id=parent_id), ["parent_task_id"]
    )


async def test_racing_deletes_and_new_subtasks_leave_no_live_task_under_a_deleted_one(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    parents = [await create_task(tasks, project.id) for _ in range(RACES)]
    movers = [await create_task(tasks, project.id) for _ in range(RACES)]

    async with asyncio.timeout(DEADLINE):
        codes = await asyncio.gather(
            *(
                _settle(call)
                for parent, mover in zip(parents, movers, strict=True)
                for call in (
                    delete_task(tasks, parent.id),
                    create_task(tasks, project.id, parent_task_id=parent.id),
                    _move_under(tasks, mover.id, parent.id),
                )
            )
        )

    # Any order is fine: the delete refuses (live subtask), or the create and move do.
    assert set(codes) <= {None, FAILED_PRECONDITION}, codes
    assert await _live_under_deleted(tasks, project.id) == []


@pytest.fixture
async def postgres_channel(postgres_url: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a server of its own on the PostgreSQL test database."""
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    running = await start_server(Settings(database_url=postgres_url, address="127.0.0.1:0"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(grace=1)


async def _postgres_project(channel: grpc.aio.Channel) -> tuple[Tasks, int]:
    """TaskService stub on `channel`, and a new project's id."""
    project = await new_project(project_service_pb2_grpc.ProjectServiceStub(channel))
    return task_service_pb2_grpc.TaskServiceStub(channel), project.id


@asynccontextmanager
async def _audit_writes_held(database_url: str) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    """Hold back every INSERT into audit_events (reads go on) until the block exits.

    Yields `until_blocked(waiters, answered)`: returns once `waiters` server transactions
    wait on a lock, or the call `answered` is done.
    """
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    holder = await asyncpg.connect(dsn, timeout=DEADLINE)
    # A second connection watches: statistics are snapshotted once per transaction.
    watcher = await asyncpg.connect(dsn, timeout=DEADLINE)
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> $1"
    )

    async def until_blocked(waiters: int, answered: asyncio.Future[object]) -> None:
        async with asyncio.timeout(DEADLINE):
            while not answered.done() and await watcher.fetchval(query, holder_pid) < waiters:
                await asyncio.sleep(0.01)

    try:
        holder_pid = holder.get_server_pid()
        async with holder.transaction():
            await holder.execute("LOCK TABLE audit_events IN EXCLUSIVE MODE")
            yield until_blocked
    finally:
        await holder.close()
        await watcher.close()


async def _delete_while_adding(
    database_url: str, tasks: Tasks, parent_id: int, add: Callable[[], Awaitable[object]]
) -> tuple[grpc.StatusCode | None, grpc.StatusCode | None]:
    """Delete `parent_id` and, while the delete holds its locks uncommitted, run `add`.

    Returns the status codes of the delete and of `add` (None for success).
    """
    futures: list[asyncio.Future[grpc.StatusCode | None]] = []
    try:
        async with _audit_writes_held(database_url) as until_blocked:
            futures.append(asyncio.ensure_future(_settle(delete_task(tasks, parent_id))))
            await until_blocked(1, futures[0])  # the delete waits to write its audit row
            futures.append(asyncio.ensure_future(_settle(add())))
            await until_blocked(2, futures[1])  # the create/move waits too (or has answered)
        # The audit lock is gone: the delete commits, then the create/move goes on.
        async with asyncio.timeout(DEADLINE):
            deleted, added = await asyncio.gather(*futures)
        return deleted, added
    finally:
        await asyncio.gather(*futures, return_exceptions=True)


async def test_a_subtask_created_while_its_parent_is_being_deleted_is_refused_interleaved(
    postgres_url: str, postgres_channel: grpc.aio.Channel
) -> None:
    tasks, project_id = await _postgres_project(postgres_channel)
    parent = await create_task(tasks, project_id)

    deleted, created = await _delete_while_adding(
        postgres_url,
        tasks,
        parent.id,
        lambda: create_task(tasks, project_id, parent_task_id=parent.id),
    )

    assert deleted is None
    assert await _live_under_deleted(tasks, project_id) == []
    assert created == FAILED_PRECONDITION  # actual: OK, a live child of a deleted parent


async def test_a_task_moved_under_a_parent_being_deleted_is_refused_interleaved(
    postgres_url: str, postgres_channel: grpc.aio.Channel
) -> None:
    tasks, project_id = await _postgres_project(postgres_channel)
    parent = await create_task(tasks, project_id)
    mover = await create_task(tasks, project_id)

    deleted, moved = await _delete_while_adding(
        postgres_url, tasks, parent.id, lambda: _move_under(tasks, mover.id, parent.id)
    )

    assert deleted is None
    assert await _live_under_deleted(tasks, project_id) == []
    assert moved == FAILED_PRECONDITION  # actual: OK, a live task under a deleted parent
