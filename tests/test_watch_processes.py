"""WatchTasks across server processes on PostgreSQL (separate `python -m service` children).

Writes committed by one process reach watchers on another; every watcher receives every
matching event once, in commit order per task; resumes, snapshots, expiry, slow
watchers and shutdown behave across processes; 1,000 idle watchers cost one listening
connection and bounded memory. Expectations are computed here, independently of the
service: a task's version (etag) is bumped under its row lock by every write, so a
task's versions order its commits; filters are re-implemented on the messages.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from service.storage import migrate
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from tests.conftest import unique
from tests.infra.service_process import run_service, service_process
from tests.watching import (
    BOOKMARK,
    SNAPSHOT,
    Watch,
    assert_each_change_once_in_commit_order,
    mirror,
    started,
    summary,
    version,
)

pb = task_service_pb2
S = resources_pb2
WRITERS = 16
OPS_PER_WRITER = 600  # plus a batch of 25 creates each: 16 x 625 = 10,000 writes
BATCH = 25
HOT_TASKS = 8  # updated by every writer: concurrent writes to the same rows
# One client connection per channel (not the process-wide shared subchannel).
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
SMALL_WINDOW = (("grpc.http2.bdp_probe", 0), *OWN_CONNECTION)


@pytest.fixture
async def pg_url(postgres_url: str) -> str:
    """The run's PostgreSQL database, migrated."""
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    return postgres_url


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database (pg_stat_activity, audit rows)."""
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    yield connection
    await connection.close()


def _stub(channel: grpc.aio.Channel) -> task_service_pb2_grpc.TaskServiceStub:
    return task_service_pb2_grpc.TaskServiceStub(channel)


# --- filters, re-implemented on messages ----------------------------------------------


def matches(task_filter: dict[str, Any], task: resources_pb2.Task) -> bool:
    """Whether a task (as a message) is in the set a WatchTasksRequest's filters name."""
    f = task_filter
    return (
        (f.get("show_deleted", False) or not task.HasField("delete_time"))
        and ("project_id" not in f or task.project_id == f["project_id"])
        and ("statuses" not in f or task.status in f["statuses"])
        and ("priorities" not in f or task.priority in f["priorities"])
        and ("assignee_id" not in f or task.assignee_id == f["assignee_id"])
        and (not f.get("unassigned") or not task.HasField("assignee_id"))
        and (not f.get("top_level_only") or not task.HasField("parent_task_id"))
        and set(f.get("tags", ())) <= set(task.tags)
    )


def expected_for(
    reference: list[pb.TaskEvent], task_filter: dict[str, Any]
) -> list[tuple[int, int, bool]]:
    """What a watcher with `task_filter` must receive, from the unfiltered stream: the
    changes after which the task matches, or before which it did (then leaving)."""
    previous: dict[int, resources_pb2.Task] = {}
    expected = []
    for event in reference:
        before, after = previous.get(event.task.id), event.task
        previous[after.id] = after
        was = before is not None and matches(task_filter, before)
        now = matches(task_filter, after)
        if was or now:
            expected.append((after.id, version(after), was and not now))
    return expected


def received(watch: Watch) -> list[tuple[int, int, bool]]:
    return [(e.task.id, version(e.task), e.no_longer_matches) for e in watch.changes]


# --- the writers ------------------------------------------------------------------------


async def _setup(channel: grpc.aio.Channel) -> dict[str, int]:
    projects = project_service_pb2_grpc.ProjectServiceStub(channel)
    workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
    ids = {}
    for name in ("p1", "p2"):
        project = await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=unique(name))
        )
        ids[name] = project.id
    for name in ("w1", "w2"):
        worker = await workers.CreateWorker(
            worker_service_pb2.CreateWorkerRequest(
                worker=S.Worker(name=name, email=f"{unique(name)}@example.com")
            )
        )
        ids[name] = worker.id
    return ids


def _random_change(rng: random.Random, ids: dict[str, int]) -> tuple[S.Task, list[str]]:
    task = S.Task()
    fields = rng.sample(["status", "priority", "tags", "assignee_id", "title"], rng.randint(1, 3))
    for field in fields:
        if field == "status":
            task.status = rng.choice(list(S.TaskStatus.values())[1:])
        elif field == "priority":
            task.priority = rng.choice(list(S.TaskPriority.values())[1:])
        elif field == "tags":
            task.tags.extend(rng.sample(["red", "blue", "green"], rng.randint(0, 3)))
        elif field == "assignee_id":
            assignee = rng.choice([ids["w1"], ids["w2"], None])
            if assignee is not None:
                task.assignee_id = assignee
        else:
            task.title = f"t{rng.randrange(10**6)}"
    return task, fields


async def _write(
    tasks: Any, writer: int, ids: dict[str, int], hot: list[int], created: list[int]
) -> None:
    """One writer: a batch of 25 creates (a root and its subtasks among them), then
    600 single-task writes: updates, deletes and undeletes of its own tasks, and
    updates of the hot tasks every writer shares."""
    rng = random.Random(writer)
    project = ids["p1"] if writer % 2 else ids["p2"]
    requests = [
        pb.CreateTaskRequest(
            task=S.Task(project_id=project, title=f"w{writer}-{n}", tags=["red"] if n % 3 else []),
            **({"batch_parent_index": 0} if 0 < n <= 5 else {}),
        )
        for n in range(BATCH)
    ]
    batch = await tasks.BatchCreateTasks(pb.BatchCreateTasksRequest(requests=requests))
    mine = [task.id for task in batch.tasks]
    created.extend(mine)
    leaves, deleted = mine[1:], set()  # the root keeps its subtasks: never deleted
    for _ in range(OPS_PER_WRITER):
        if rng.random() < 0.1:
            task_id = rng.choice(hot)
        else:
            task_id = rng.choice(leaves)
            if task_id in deleted:
                await tasks.UndeleteTask(pb.UndeleteTaskRequest(id=task_id))
                deleted.discard(task_id)
                continue
            if rng.random() < 0.1:
                await tasks.DeleteTask(pb.DeleteTaskRequest(id=task_id))
                deleted.add(task_id)
                continue
        change, fields = _random_change(rng, ids)
        change.id = task_id
        await tasks.UpdateTask(pb.UpdateTaskRequest(task=change, update_mask={"paths": fields}))


async def _listed(tasks: Any, task_filter: dict[str, Any], ours: set[int]) -> dict[int, S.Task]:
    found: dict[int, S.Task] = {}
    token = ""
    while True:
        page = await tasks.ListTasks(
            pb.ListTasksRequest(page_size=1000, page_token=token, **task_filter)
        )
        found.update((t.id, t) for t in page.tasks if t.id in ours)
        if not (token := page.next_page_token):
            return found


@pytest.mark.timeout(600)
async def test_ten_thousand_writes_on_one_process_reach_watchers_on_another_exactly_once(
    pg_url: str, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    async with (
        service_process("--database-url", pg_url, log_path=tmp_path / "a.log") as writer_process,
        service_process("--database-url", pg_url, log_path=tmp_path / "b.log") as watcher_process,
        grpc.aio.insecure_channel(writer_process.address) as a_channel,
        grpc.aio.insecure_channel(watcher_process.address) as b_channel,
    ):
        a, b = _stub(a_channel), _stub(b_channel)
        ids = await _setup(a_channel)
        filters: dict[str, dict[str, Any]] = {
            "all": {},
            "p1": {"project_id": ids["p1"]},
            "p2 active": {
                "project_id": ids["p2"],
                "statuses": [S.TASK_STATUS_IN_PROGRESS, S.TASK_STATUS_DONE],
            },
            "red, deleted too": {"tags": ["red"], "show_deleted": True},
            "urgent for w1": {
                "priorities": [S.TASK_PRIORITY_HIGH, S.TASK_PRIORITY_URGENT],
                "assignee_id": ids["w1"],
            },
        }
        watches = {
            name: await started(Watch(b, pb.WatchTasksRequest(**f))) for name, f in filters.items()
        }
        # A watcher whose client dies mid-stream (its connection closed), then resumes.
        doomed_channel = grpc.aio.insecure_channel(watcher_process.address, options=OWN_CONNECTION)
        doomed = await started(Watch(_stub(doomed_channel), pb.WatchTasksRequest(**filters["p1"])))

        hot_batch = await a.BatchCreateTasks(
            pb.BatchCreateTasksRequest(
                requests=[
                    pb.CreateTaskRequest(task=S.Task(project_id=ids["p1"], title=f"hot {n}"))
                    for n in range(HOT_TASKS)
                ]
            )
        )
        hot = [task.id for task in hot_batch.tasks]
        created: list[int] = [*hot]
        writers = asyncio.gather(*(_write(a, w, ids, hot, created) for w in range(WRITERS)))

        reference = watches["all"]
        await doomed.wait_for(lambda w: len(w.changes) >= 1000, timeout=120)
        await doomed_channel.close()  # the client is gone mid-stream
        await asyncio.gather(doomed._reader, return_exceptions=True)
        resumed = Watch(b, pb.WatchTasksRequest(start_cursor=doomed.last_cursor, **filters["p1"]))
        await reference.wait_for(lambda w: len(w.changes) >= 3000, timeout=120)
        snapshot = Watch(b, pb.WatchTasksRequest(initial_snapshot=True, **filters["p1"]))
        await writers

        ours = set(created)
        committed = await admin.fetchval(
            "SELECT count(*) FROM audit_events WHERE entity_type = 'task' "
            "AND entity_id = ANY($1::bigint[])",
            list(ours),
        )
        assert committed == WRITERS * (BATCH + OPS_PER_WRITER) + HOT_TASKS
        await reference.wait_for(lambda w: len(w.changes) >= committed, timeout=180)
        for name, f in filters.items():
            expected = expected_for(reference.changes, f)
            count = len(expected)
            await watches[name].wait_for(lambda w, count=count: len(w.changes) >= count, 120)
        final_p1 = await _listed(a, filters["p1"], ours)
        await resumed.wait_for(
            lambda w: len(doomed.changes) + len(w.changes) >= len(watches["p1"].changes), 120
        )
        await snapshot.wait_for(lambda w: mirror(w.events) == final_p1, timeout=120)
        await asyncio.sleep(0.5)  # nothing more may arrive
        for watch in (*watches.values(), resumed, snapshot):
            await watch.cancel()

        # Every write exactly once, each task's writes in commit order (versions +1 each).
        assert len(reference.changes) == committed
        assert {e.task.id for e in reference.changes} == ours
        assert_each_change_once_in_commit_order(reference.events, consecutive=True)
        for name, f in filters.items():
            assert received(watches[name]) == expected_for(reference.changes, f), name
            assert mirror(watches[name].events) == await _listed(a, f, ours), name
        assert any(gone for name in filters for _, _, gone in received(watches[name]))
        # The killed watcher, resumed from its last cursor: the same sequence.
        assert summary(doomed.changes + resumed.changes) == summary(watches["p1"].changes)
        assert len(doomed.changes) >= 1000
        # The snapshot taken under concurrent writes: nothing missed, nothing twice.
        assert sum(1 for e in snapshot.events if e.type == SNAPSHOT) > 0
        assert any(e.type == BOOKMARK for e in snapshot.events)
        assert_each_change_once_in_commit_order(snapshot.events, consecutive=True)
        assert mirror(snapshot.events) == final_p1


async def test_a_cursor_older_than_the_retention_is_out_of_range_on_every_process(
    pg_url: str, tmp_path: Path
) -> None:
    async with (
        service_process("--database-url", pg_url, log_path=tmp_path / "a.log") as first,
        service_process("--database-url", pg_url, log_path=tmp_path / "b.log") as second,
        grpc.aio.insecure_channel(first.address) as a_channel,
        grpc.aio.insecure_channel(second.address) as b_channel,
    ):
        ids = await _setup(a_channel)
        a, b = _stub(a_channel), _stub(b_channel)
        watch = await started(Watch(b, pb.WatchTasksRequest(project_id=ids["p1"])))
        await a.CreateTask(pb.CreateTaskRequest(task=S.Task(project_id=ids["p1"], title="x")))
        [event] = await watch.wait_for_changes(1)
        await watch.cancel()
        await a.CreateTask(pb.CreateTaskRequest(task=S.Task(project_id=ids["p1"], title="y")))
        # Retention as configured for `taskservice purge` (about 10 ms).
        await _taskservice("purge", "--database-url", pg_url, "--feed-retention-days", "1e-7")
        for stub in (a, b):
            stale = Watch(stub, pb.WatchTasksRequest(start_cursor=event.cursor))
            end = await stale.ended()
            assert (end.code, end.reason) == (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED")
        # Re-list and watch again: the new bookmark resumes.
        again = Watch(b, pb.WatchTasksRequest(project_id=ids["p1"], initial_snapshot=True))
        await again.wait_for(lambda w: any(e.type == BOOKMARK for e in w.events))
        await again.cancel()
        assert sorted(e.task.title for e in again.events if e.type == SNAPSHOT) == ["x", "y"]


async def _taskservice(*args: str) -> None:
    code, _, stderr = await run_service(*args)
    assert code == 0, stderr


async def test_a_slow_watcher_on_another_process_is_cut_off_and_resumes(
    pg_url: str, tmp_path: Path
) -> None:
    async with (
        service_process("--database-url", pg_url, log_path=tmp_path / "a.log") as first,
        service_process(
            "--database-url", pg_url, "--feed-watcher-buffer", "10", log_path=tmp_path / "b.log"
        ) as second,
        grpc.aio.insecure_channel(first.address) as a_channel,
        grpc.aio.insecure_channel(second.address, options=SMALL_WINDOW) as b_channel,
    ):
        ids = await _setup(a_channel)
        a, b = _stub(a_channel), _stub(b_channel)
        call = b.WatchTasks(pb.WatchTasksRequest(project_id=ids["p1"]))
        events = list((await call.read()).events)  # the opening bookmark; then it stalls
        created = []
        for _ in range(4):
            batch = await a.BatchCreateTasks(
                pb.BatchCreateTasksRequest(
                    requests=[
                        pb.CreateTaskRequest(
                            task=S.Task(project_id=ids["p1"], title="t", description="x" * 2000)
                        )
                        for _ in range(100)
                    ]
                )
            )
            created.extend(t.id for t in batch.tasks)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _read_all(call, events)
        from tests.watching import stream_end

        end = await stream_end(call, raised.value)
        assert (end.code, end.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCHER_TOO_SLOW")
        assert end.cursor == [e.cursor for e in events if e.cursor][-1]
        resumed = Watch(b, pb.WatchTasksRequest(project_id=ids["p1"], start_cursor=end.cursor))
        delivered = [e.task.id for e in events if e.type != BOOKMARK]
        assert len(delivered) < len(created)
        rest = await resumed.wait_for_changes(len(created) - len(delivered), timeout=60)
        await resumed.cancel()
        assert delivered + [e.task.id for e in rest] == created


async def _read_all(call: Any, events: list[pb.TaskEvent]) -> None:
    while (response := await call.read()) is not grpc.aio.EOF:
        events.extend(response.events)


async def test_sigterm_ends_watches_with_their_cursor_and_another_process_resumes(
    pg_url: str, tmp_path: Path
) -> None:
    async with (
        service_process("--database-url", pg_url, log_path=tmp_path / "a.log") as first,
        grpc.aio.insecure_channel(first.address) as a_channel,
    ):
        ids = await _setup(a_channel)
        a = _stub(a_channel)
        async with (
            service_process("--database-url", pg_url, log_path=tmp_path / "b.log") as second,
            grpc.aio.insecure_channel(second.address) as b_channel,
        ):
            watch = await started(
                Watch(_stub(b_channel), pb.WatchTasksRequest(project_id=ids["p1"]))
            )
            before = await a.CreateTask(
                pb.CreateTaskRequest(task=S.Task(project_id=ids["p1"], title="before"))
            )
            await watch.wait_for_changes(1)
            exit_code = asyncio.create_task(second.terminate())
            end = await watch.ended()
            assert (end.code, end.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVER_SHUTTING_DOWN")
            assert await exit_code == 0
        after = await a.CreateTask(
            pb.CreateTaskRequest(task=S.Task(project_id=ids["p1"], title="after"))
        )
        resumed = Watch(a, pb.WatchTasksRequest(project_id=ids["p1"], start_cursor=end.cursor))
        [event] = await resumed.wait_for_changes(1)
        await asyncio.sleep(0.2)
        await resumed.cancel()
        assert [e.task.id for e in watch.changes] == [before.id]
        assert [e.task.id for e in resumed.changes] == [after.id]


IDLE_WATCHERS = 1000
RSS_BUDGET = 64 * 1024 * 1024


@pytest.mark.timeout(300)
async def test_a_thousand_idle_watchers_cost_one_listening_connection_and_bounded_memory(
    pg_url: str, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    database = make_url(pg_url).database
    async with service_process("--database-url", pg_url, log_path=tmp_path / "b.log") as server:
        channels = [
            grpc.aio.insecure_channel(server.address, options=OWN_CONNECTION) for _ in range(12)
        ]
        try:
            stubs = [_stub(channel) for channel in channels]
            ids = await _setup(channels[0])
            warm = await started(Watch(stubs[0], pb.WatchTasksRequest(project_id=ids["p1"])))
            await warm.cancel()
            backends_before = await _backends(admin, database)
            rss_before = server.rss_bytes()

            watches = []
            for index in range(IDLE_WATCHERS):
                stub = stubs[index % 10]  # 100 streams per connection (the default limit)
                watches.append(Watch(stub, pb.WatchTasksRequest(project_id=ids["p1"])))
            for watch in watches:
                await started(watch, timeout=120)
            rss_after = server.rss_bytes()
            listeners = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND application_name = $2",
                database,
                f"taskservice-feed-listener pid={server.pid}",
            )
            backends_after = await _backends(admin, database)

            # A write reaches all of them.
            created = await stubs[11].CreateTask(
                pb.CreateTaskRequest(task=S.Task(project_id=ids["p1"], title="to all"))
            )
            for watch in watches:
                await watch.wait_for_changes(1, timeout=120)
            assert {w.changes[0].task.id for w in watches} == {created.id}
            await asyncio.gather(*(watch.cancel() for watch in watches))
        finally:
            for channel in channels:
                await channel.close()
    growth = rss_after - rss_before
    assert listeners == 1, "one LISTEN connection for the process, whatever the watchers"
    # Idle watchers hold no database connection (the pool may have grown by a spare one).
    assert backends_after <= backends_before + 1, (backends_before, backends_after)
    assert growth <= RSS_BUDGET, (
        f"{IDLE_WATCHERS} idle watchers grew RSS by {growth / 2**20:.1f} MiB"
    )


async def _backends(admin: asyncpg.Connection, database: str) -> int:
    count: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    return count
