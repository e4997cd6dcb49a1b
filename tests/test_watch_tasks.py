"""WatchTasks in one process, on both backends: events, filters, cursors, snapshots, ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from service.runtime.server import TaskServer, start_server
from service.settings import Settings
from service.storage.purge import purge
from taskmanager.v1 import (
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
)
from tests.conftest import create_task, wait_until
from tests.rpc_errors import expect_failure
from tests.watching import (
    BOOKMARK,
    CREATED,
    DELETED,
    SNAPSHOT,
    UNDELETED,
    UPDATED,
    StreamEnd,
    Watch,
    assert_each_change_once_in_commit_order,
    mirror,
    started,
    stream_end,
    summary,
)

pb = task_service_pb2
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def update(tasks: Any, task_id: int, **fields: Any) -> resources_pb2.Task:
    """UpdateTask of the given fields (the mask names exactly them)."""
    request = pb.UpdateTaskRequest(
        task=resources_pb2.Task(id=task_id, **fields), update_mask={"paths": list(fields)}
    )
    updated: resources_pb2.Task = await tasks.UpdateTask(request)
    return updated


async def list_matching(tasks: Any, **filters: Any) -> dict[int, resources_pb2.Task]:
    """What ListTasks says the watched set is (the independent truth for mirrors)."""
    found: dict[int, resources_pb2.Task] = {}
    token = ""
    while True:
        page = await tasks.ListTasks(
            pb.ListTasksRequest(page_size=1000, page_token=token, **filters)
        )
        found.update((task.id, task) for task in page.tasks)
        token = page.next_page_token
        if not token:
            return found


# A client that reads slowly: without BDP probing its HTTP/2 receive window stays at
# 64 KiB, so a server writing to it waits (gRPC flow control) once that much is unread.
SMALL_WINDOW = (("grpc.http2.bdp_probe", 0),)


@contextlib.asynccontextmanager
async def dedicated(
    database_url: str, channel_options: Any = (), **settings: Any
) -> AsyncIterator[tuple[TaskServer, Any]]:
    """A server of this test's own (other feed settings), and a TaskService stub to it."""
    running = await start_server(
        Settings(database_url=database_url, address="127.0.0.1:0", **settings)
    )
    try:
        address = f"127.0.0.1:{running.port}"
        async with grpc.aio.insecure_channel(address, options=channel_options) as channel:
            yield running, task_service_pb2_grpc.TaskServiceStub(channel)
    finally:
        await running.stop(grace=1)


async def test_watch_from_now_opens_with_a_bookmark_then_streams_each_change_once(tasks, project):
    before = await create_task(tasks, project.id, title="before the watch")
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id)))
    assert [e.type for e in watch.events] == [BOOKMARK]
    assert watch.events[0].cursor

    created = await create_task(tasks, project.id, title="new", tags=["a"])
    updated = await update(
        tasks, created.id, title="renamed", status=resources_pb2.TASK_STATUS_DONE
    )
    deleted = await tasks.DeleteTask(pb.DeleteTaskRequest(id=before.id))
    undeleted = await tasks.UndeleteTask(pb.UndeleteTaskRequest(id=before.id))
    changes = await watch.wait_for_changes(4)
    await watch.cancel()

    assert summary(changes) == [
        (CREATED, created.id, created.etag),
        (UPDATED, created.id, updated.etag),
        (DELETED, before.id, deleted.etag),
        (UNDELETED, before.id, undeleted.etag),
    ]
    assert changes[0].task == created
    assert changes[1].task == updated
    assert list(changes[1].changed_fields.paths) == ["status", "title"]
    assert changes[2].task.HasField("delete_time")
    assert changes[2].no_longer_matches, "deleted: out of a set without show_deleted"
    assert not changes[3].no_longer_matches
    assert all(e.actor == "anonymous" and e.HasField("commit_time") for e in changes)
    assert len({e.cursor for e in watch.events}) == len(watch.events), "cursors are distinct"


async def test_events_name_their_actor(tasks, project):
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id)))
    await tasks.CreateTask(
        pb.CreateTaskRequest(task=resources_pb2.Task(project_id=project.id, title="t")),
        metadata=(("x-actor", "ada"),),
    )
    [event] = await watch.wait_for_changes(1)
    await watch.cancel()
    assert event.actor == "ada"
    assert set(event.changed_fields.paths) >= {"title", "project_id", "status", "priority"}


FILTERS: list[dict[str, Any]] = [
    {},
    {"statuses": [resources_pb2.TASK_STATUS_IN_PROGRESS, resources_pb2.TASK_STATUS_DONE]},
    {"priorities": [resources_pb2.TASK_PRIORITY_HIGH]},
    {"tags": ["red", "blue"]},
    {"unassigned": True},
    {"top_level_only": True},
    {"show_deleted": True},
    {"tags": ["red"], "show_deleted": True, "statuses": [resources_pb2.TASK_STATUS_PENDING]},
]


async def test_mirrors_of_filtered_watches_equal_list_tasks(tasks, project, worker):
    """Tasks move in and out of each filtered set; every mirror ends equal to ListTasks."""
    watches = [
        await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id, **f)))
        for f in FILTERS
    ]
    parent = await create_task(tasks, project.id, tags=["red"])
    child = await create_task(tasks, project.id, parent_task_id=parent.id, assignee_id=worker.id)
    other = await create_task(tasks, project.id, priority=resources_pb2.TASK_PRIORITY_HIGH)
    await update(tasks, child.id, tags=["red", "blue"], status=resources_pb2.TASK_STATUS_DONE)
    await update(tasks, parent.id, status=resources_pb2.TASK_STATUS_IN_PROGRESS)
    await update(tasks, other.id, priority=resources_pb2.TASK_PRIORITY_LOW, tags=["blue", "red"])
    await update(tasks, child.id, status=resources_pb2.TASK_STATUS_PENDING)
    await tasks.DeleteTask(pb.DeleteTaskRequest(id=parent.id, force=True))
    await tasks.UndeleteTask(pb.UndeleteTaskRequest(id=parent.id))
    await update(tasks, child.id, parent_task_id=None)  # masked and unset: top level now
    await tasks.DeleteTask(pb.DeleteTaskRequest(id=other.id))
    await update(tasks, parent.id, title="done")

    for watch, task_filter in zip(watches, FILTERS, strict=True):
        expected = await list_matching(tasks, project_id=project.id, **task_filter)
        await watch.wait_for(lambda w, expected=expected: mirror(w.events) == expected)
        await asyncio.sleep(0.1)  # and nothing more arrives that would change it
        await watch.cancel()
        assert mirror(watch.events) == expected, task_filter
        assert_each_change_once_in_commit_order(watch.events, consecutive=not task_filter)
    assert any(e.no_longer_matches for w in watches for e in w.events)


async def test_a_creator_filter_follows_the_creator_and_its_deletion(
    tasks, project, worker, workers
):
    """creator_id as ListTasks applies it; a task whose creator is deleted leaves the set."""
    own = {"creator_id": worker.id}
    mine = await create_task(tasks, project.id, creator_id=worker.id, title="mine")
    snapshot = await started(
        Watch(tasks, pb.WatchTasksRequest(project_id=project.id, initial_snapshot=True, **own))
    )
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id, **own)))
    later = await create_task(tasks, project.id, creator_id=worker.id, title="later")
    await create_task(tasks, project.id, title="someone else's")
    await update(tasks, mine.id, title="still mine")
    await workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=worker.id))

    changes = await watch.wait_for_changes(4)
    await asyncio.sleep(0.1)  # and nothing more arrives
    await watch.cancel()
    assert [(e.type, e.task.id) for e in watch.changes[:2]] == [
        (CREATED, later.id),
        (UPDATED, mine.id),
    ]
    dropped = changes[2:]  # the worker's delete, one transaction: both leave the set
    assert sorted(e.task.id for e in dropped) == sorted([mine.id, later.id])
    assert all(e.type == UPDATED and e.no_longer_matches for e in dropped)
    assert not any(e.task.HasField("creator_id") for e in dropped)
    assert mirror(watch.events) == await list_matching(tasks, project_id=project.id, **own) == {}

    await snapshot.wait_for(lambda w: len([e for e in w.events if e.no_longer_matches]) == 2)
    await snapshot.cancel()
    assert [e.task.id for e in snapshot.events if e.type == SNAPSHOT] == [mine.id]
    assert mirror(snapshot.events) == {}


async def test_resume_from_any_cursor_continues_right_after_it(tasks, project):
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id)))
    ids = [(await create_task(tasks, project.id)).id for _ in range(3)]
    for task_id in ids:
        await update(tasks, task_id, status=resources_pb2.TASK_STATUS_BLOCKED)
    await watch.wait_for_changes(6)
    await watch.cancel()
    everything = summary(watch.events)
    for index, event in enumerate(watch.events):
        resumed = Watch(
            tasks, pb.WatchTasksRequest(project_id=project.id, start_cursor=event.cursor)
        )
        rest = summary(watch.events[index + 1 :])
        if rest:
            await resumed.wait_for_changes(len(rest))
        await asyncio.sleep(0.1)  # nothing more may come
        await resumed.cancel()
        assert summary(resumed.events) == rest, f"resumed after event {index}"
    assert len(everything) == 6


async def test_cursors_do_not_depend_on_the_filter(tasks, project):
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id)))
    first = await create_task(tasks, project.id, tags=["x"])
    second = await create_task(tasks, project.id, tags=["y"])
    await watch.wait_for_changes(2)
    await watch.cancel()
    resumed = Watch(tasks, pb.WatchTasksRequest(tags=["y"], start_cursor=watch.changes[0].cursor))
    [event] = await resumed.wait_for_changes(1)
    await resumed.cancel()
    assert event.task.id == second.id, f"not {first.id}: it was before the cursor"


async def test_initial_snapshot_streams_matching_tasks_then_a_bookmark(tasks, project):
    kept = [await create_task(tasks, project.id, tags=["k"]) for _ in range(3)]
    await create_task(tasks, project.id, tags=["other"])
    watch = Watch(
        tasks, pb.WatchTasksRequest(project_id=project.id, tags=["k"], initial_snapshot=True)
    )
    await watch.wait_for(lambda w: BOOKMARK in [e.type for e in w.events])
    assert [e.type for e in watch.events] == [SNAPSHOT] * 3 + [BOOKMARK]
    assert [e.task for e in watch.events[:3]] == kept
    assert not any(e.cursor for e in watch.events[:3]), "snapshot events carry no cursor"
    after = await create_task(tasks, project.id, tags=["k"])
    [*_, event] = await watch.wait_for_changes(4)
    await watch.cancel()
    assert (event.type, event.task.id) == (CREATED, after.id)


async def test_initial_snapshot_under_concurrent_writes_misses_nothing_and_repeats_nothing(
    database_url, project
):
    """Batches of 7 are read while writers change tasks behind and ahead of the snapshot's
    position. The unfiltered watch sees each task's versions rise by exactly one from its
    snapshot on (no change missed or repeated around the bookmark); both mirrors end
    equal to ListTasks."""
    async with dedicated(database_url, feed_batch_size=7) as (_server, tasks):
        ids = [(await create_task(tasks, project.id, tags=["s"])).id for _ in range(40)]
        stop = asyncio.Event()

        async def write(offset: int) -> None:
            step = 0
            statuses = [resources_pb2.TASK_STATUS_DONE, resources_pb2.TASK_STATUS_PENDING]
            while not stop.is_set():
                task_id = ids[(offset + step * 7) % len(ids)]
                await update(tasks, task_id, status=statuses[step % 2], title=f"{offset}-{step}")
                if step % 5 == 0:
                    ids.append((await create_task(tasks, project.id, tags=["s"])).id)
                step += 1

        writers = [asyncio.create_task(write(offset)) for offset in range(3)]
        await asyncio.sleep(0.2)
        pending = {"statuses": [resources_pb2.TASK_STATUS_PENDING]}
        watches = [
            Watch(tasks, pb.WatchTasksRequest(project_id=project.id, initial_snapshot=True, **f))
            for f in ({}, pending)
        ]
        for watch in watches:
            await watch.wait_for(lambda w: any(e.type == BOOKMARK for e in w.events), 60)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*writers)
        for watch, task_filter in zip(watches, ({}, pending), strict=True):
            final = await list_matching(tasks, project_id=project.id, **task_filter)
            await watch.wait_for(lambda w, final=final: mirror(w.events) == final, 60)
            await watch.cancel()
    everything, filtered = watches
    assert sum(1 for e in everything.events if e.type == SNAPSHOT) >= 40, "several batches"
    bookmark = [e.type for e in everything.events].index(BOOKMARK)
    assert all(e.type == SNAPSHOT or not e.cursor for e in everything.events[:bookmark])
    assert all(e.cursor for e in everything.events[bookmark:])
    assert_each_change_once_in_commit_order(everything.events, consecutive=True)
    assert_each_change_once_in_commit_order(filtered.events, consecutive=False)


async def test_an_expired_cursor_is_out_of_range(tasks, project, database_url):
    watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id)))
    await create_task(tasks, project.id)
    [event] = await watch.wait_for_changes(1)
    await watch.cancel()
    await create_task(tasks, project.id)
    await purge(Settings(database_url=database_url), feed_retention=timedelta(0))

    failure = await expect_failure(
        _first_response(tasks, pb.WatchTasksRequest(start_cursor=event.cursor)),
        grpc.StatusCode.OUT_OF_RANGE,
    )
    assert failure.info.reason == "CURSOR_EXPIRED"
    # A fresh watch (from now, or a snapshot) works, and its cursors are good again.
    fresh = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id)))
    await fresh.cancel()
    again = Watch(
        tasks, pb.WatchTasksRequest(project_id=project.id, start_cursor=fresh.last_cursor)
    )
    after = await create_task(tasks, project.id)
    [event] = await again.wait_for_changes(1)
    await again.cancel()
    assert event.task.id == after.id


async def _first_response(tasks: Any, request: pb.WatchTasksRequest) -> pb.WatchTasksResponse:
    async for response in tasks.WatchTasks(request):
        return response  # type: ignore[no-any-return]
    raise AssertionError("the stream ended without a response")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"start_cursor": "not-a-cursor"}, "start_cursor"),
        ({"start_cursor": "gAAAAABnot-really"}, "start_cursor"),
        ({"initial_snapshot": True, "start_cursor": "x"}, "initial_snapshot"),
        ({"statuses": [resources_pb2.TASK_STATUS_UNSPECIFIED]}, "statuses[0]"),
        ({"assignee_id": 1, "unassigned": True}, "unassigned"),
        ({"project_id": -1}, "project_id"),
        ({"creator_id": 0}, "creator_id"),
        ({"view": 7}, "view"),
    ],
)
async def test_bad_requests_are_invalid_argument(tasks, request_fields, field):
    failure = await expect_failure(
        _first_response(tasks, pb.WatchTasksRequest(**request_fields)), INVALID
    )
    assert failure.fields == [field]


async def test_a_page_token_is_not_a_cursor(tasks, project):
    for _ in range(2):
        await create_task(tasks, project.id)
    page = await tasks.ListTasks(pb.ListTasksRequest(project_id=project.id, page_size=1))
    failure = await expect_failure(
        _first_response(tasks, pb.WatchTasksRequest(start_cursor=page.next_page_token)), INVALID
    )
    assert failure.info.reason == "INVALID_CURSOR"


async def test_quiet_streams_get_bookmarks_at_the_interval(database_url, project):
    async with dedicated(database_url, feed_bookmark_interval=0.2) as (_server, tasks):
        watch = Watch(tasks, pb.WatchTasksRequest(project_id=project.id))
        await watch.wait_for(lambda w: len(w.events) >= 4, timeout=10)
        await create_task(tasks, project.id)
        await watch.wait_for_changes(1)
        await watch.wait_for(lambda w: w.events[-1].type == BOOKMARK)
        await watch.cancel()
    assert {e.type for e in watch.events} == {BOOKMARK, CREATED}
    # A bookmark after the change resumes past it.
    async with dedicated(database_url) as (_server, tasks):
        resumed = Watch(
            tasks, pb.WatchTasksRequest(project_id=project.id, start_cursor=watch.last_cursor)
        )
        await asyncio.sleep(0.3)
        assert resumed.end is None
        await resumed.cancel()
    assert resumed.changes == []


async def test_a_slow_watcher_ends_with_resource_exhausted_and_resumes(database_url, project):
    async with dedicated(database_url, SMALL_WINDOW, feed_watcher_buffer=5) as (server, tasks):
        request = pb.WatchTasksRequest(project_id=project.id)
        call = tasks.WatchTasks(request)
        first = await call.read()  # the opening bookmark; then the client stops reading
        created = []
        for _ in range(4):  # 400 events of 2 KiB: far more than the window and the buffer
            batch = await tasks.BatchCreateTasks(
                pb.BatchCreateTasksRequest(
                    requests=[
                        pb.CreateTaskRequest(
                            task=resources_pb2.Task(
                                project_id=project.id, title="t", description="x" * 2000
                            )
                        )
                        for _ in range(100)
                    ]
                )
            )
            created.extend(task.id for task in batch.tasks)
        received = list(first.events)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _read_to_the_end(call, received)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        end = await _end_of(call, raised.value)
        assert end.reason == "WATCHER_TOO_SLOW"
        assert end.cursor == next(e.cursor for e in reversed(received) if e.cursor)
        await wait_until(lambda: server.feed.watchers == 0)

        resumed = Watch(tasks, pb.WatchTasksRequest(project_id=project.id, start_cursor=end.cursor))
        missing = len(created) - len([e for e in received if e.type == CREATED])
        assert missing > 0, "the stream was cut before the end"
        await resumed.wait_for_changes(missing)
        await resumed.cancel()
    ids = [e.task.id for e in received + resumed.events if e.type == CREATED]
    assert ids == created


async def _read_to_the_end(call: Any, received: list[pb.TaskEvent]) -> None:
    while (response := await call.read()) is not grpc.aio.EOF:
        received.extend(response.events)


async def _end_of(call: Any, error: grpc.aio.AioRpcError) -> StreamEnd:
    return await stream_end(call, error)


async def test_shutdown_ends_watches_with_unavailable_and_their_cursor(database_url, project):
    running = await start_server(Settings(database_url=database_url, address="127.0.0.1:0"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        watch = await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id)))
        created = await create_task(tasks, project.id)
        await watch.wait_for_changes(1)
        await running.stop(grace=5)
        end = await watch.ended()
    finally:
        await channel.close()
    assert end.code == grpc.StatusCode.UNAVAILABLE
    assert end.reason == "SERVER_SHUTTING_DOWN"
    assert end.cursor
    async with dedicated(database_url) as (_server, tasks):
        after = await create_task(tasks, project.id)
        resumed = Watch(tasks, pb.WatchTasksRequest(project_id=project.id, start_cursor=end.cursor))
        [event] = await resumed.wait_for_changes(1)
        await resumed.cancel()
    assert event.task.id == after.id, f"not {created.id}: it was before the cursor"


async def test_cancelled_and_expired_watches_leave_nothing_behind(tasks, project, server):
    before = server.feed.watchers
    watches = [
        await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id))) for _ in range(5)
    ]
    assert server.feed.watchers == before + 5
    for watch in watches:
        await watch.cancel()
    timed = Watch(tasks, pb.WatchTasksRequest(project_id=project.id), timeout=0.5)
    assert (await timed.ended()).code == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: server.feed.watchers == before)
    assert server.deps.open_streams == 0


async def test_a_read_only_principal_may_watch(database_url, project):
    settings = {"auth_tokens": {"r": "reader"}, "read_only_principals": ["reader"]}
    async with dedicated(database_url, **settings) as (_server, tasks):
        metadata = (("authorization", "Bearer r"),)
        watch = await started(
            Watch(tasks, pb.WatchTasksRequest(project_id=project.id), metadata=metadata)
        )
        await watch.cancel()
        denied = Watch(tasks, pb.WatchTasksRequest(project_id=project.id))
        assert (await denied.ended()).code == grpc.StatusCode.UNAUTHENTICATED
    assert watch.events[0].type == BOOKMARK


async def test_full_view_adds_the_assignee_and_subtasks(tasks, project, worker):
    watch = await started(
        Watch(tasks, pb.WatchTasksRequest(project_id=project.id, view=resources_pb2.TASK_VIEW_FULL))
    )
    parent = await create_task(tasks, project.id, assignee_id=worker.id)
    child = await create_task(tasks, project.id, parent_task_id=parent.id)
    await update(tasks, parent.id, title="with a child")
    changes = await watch.wait_for_changes(3)
    await watch.cancel()
    assert changes[0].task.assignee == worker
    assert [t.id for t in changes[2].task.subtasks] == [child.id]


async def test_watchers_share_one_read_per_commit(tasks, project, server, workers):
    """One read of new events serves every watcher of the process: the number of feed
    reads does not grow with the number of watchers."""

    async def reads_for(watchers: int) -> int:
        watches = [
            await started(Watch(tasks, pb.WatchTasksRequest(project_id=project.id)))
            for _ in range(watchers)
        ]
        reads = server.feed.reads
        for _ in range(5):
            await create_task(tasks, project.id)
        for watch in watches:
            await watch.wait_for_changes(5)
        used = server.feed.reads - reads
        for watch in watches:
            await watch.cancel()
        return used

    assert await reads_for(1) <= 5 + 2
    assert await reads_for(10) <= 5 + 2
