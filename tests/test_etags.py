"""Optimistic concurrency (AIP-154): etags change on every write, and a stale one is ABORTED."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from taskmanager.v1 import project_service_pb2, resources_pb2, task_service_pb2, worker_service_pb2
from tests.conftest import create_task, unique
from tests.rpc_errors import expect_failure
from tests.safe_writes import (
    DEADLINE,
    Projects,
    Tasks,
    Workers,
    delete_task,
    get_project,
    get_task,
    get_worker,
    new_project,
    new_worker,
    undelete_task,
    update_project_call,
    update_task,
    update_task_call,
    update_worker_call,
)

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

ABORTED = grpc.StatusCode.ABORTED


# --- every resource has an etag, and every write changes it --------------------------------


async def test_every_resource_is_created_with_an_etag_that_reads_back_the_same(
    tasks: Tasks, projects: Projects, workers: Workers
) -> None:
    project = await new_project(projects)
    worker = await new_worker(workers)
    task = await create_task(tasks, project.id)

    assert all([project.etag, worker.etag, task.etag])
    assert (await get_project(projects, project.id)).etag == project.etag
    assert (await get_worker(workers, worker.id)).etag == worker.etag
    assert (await get_task(tasks, task.id)).etag == task.etag


async def test_every_task_write_changes_its_etag(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    seen = [created.etag]

    updated = await update_task(tasks, resources_pb2.Task(id=created.id, title="a"), ["title"])
    seen.append(updated.etag)
    deleted = await delete_task(tasks, created.id)
    seen.append(deleted.etag)
    restored = await undelete_task(tasks, created.id)
    seen.append(restored.etag)
    again = await update_task(tasks, resources_pb2.Task(id=created.id, title="a"), ["title"])
    seen.append(again.etag)  # the same value written again is still a write

    assert len(set(seen)) == len(seen), seen
    assert (await get_task(tasks, created.id)).etag == again.etag


async def test_a_reading_call_does_not_change_the_etag(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    await tasks.ListTasks(task_service_pb2.ListTasksRequest(project_id=project.id))
    await tasks.ListTaskEvents(task_service_pb2.ListTaskEventsRequest(task_id=created.id))

    assert (await get_task(tasks, created.id)).etag == created.etag


async def test_every_project_and_worker_write_changes_its_etag(
    projects: Projects, workers: Workers
) -> None:
    project = await new_project(projects)
    worker = await new_worker(workers)

    renamed = await update_project_call(
        projects, resources_pb2.Project(id=project.id, description="d"), ["description"]
    )
    moved = await update_worker_call(
        workers, resources_pb2.Worker(id=worker.id, name="Renamed"), ["name"]
    )

    assert renamed.etag != project.etag
    assert moved.etag != worker.etag


async def test_deleting_a_worker_changes_the_etag_of_the_tasks_it_had(
    tasks: Tasks, project: resources_pb2.Project, workers: Workers
) -> None:
    worker = await new_worker(workers)
    assigned = await create_task(tasks, project.id, assignee_id=worker.id)

    await workers.DeleteWorker(worker_service_pb2.DeleteWorkerRequest(id=worker.id))

    after = await get_task(tasks, assigned.id)
    assert not after.HasField("assignee_id")
    assert after.etag != assigned.etag
    # So a client holding the old etag cannot overwrite the unassignment unknowingly.
    await expect_failure(
        update_task_call(
            tasks, resources_pb2.Task(id=assigned.id, title="x", etag=assigned.etag), ["title"]
        ),
        ABORTED,
    )


# --- Update: the etag travels inside the resource ------------------------------------------


async def test_update_task_with_the_current_etag_succeeds(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    updated = await update_task(
        tasks, resources_pb2.Task(id=created.id, title="mine", etag=created.etag), ["title"]
    )

    assert updated.title == "mine"


async def test_update_task_with_a_stale_etag_is_aborted_and_changes_nothing(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, title="original")
    theirs = await update_task(
        tasks, resources_pb2.Task(id=created.id, description="theirs"), ["description"]
    )

    failure = await expect_failure(
        update_task_call(
            tasks, resources_pb2.Task(id=created.id, title="mine", etag=created.etag), ["title"]
        ),
        ABORTED,
    )

    assert failure.info.reason == "ETAG_MISMATCH"
    assert await get_task(tasks, created.id) == theirs


@pytest.mark.parametrize("etag", ['"999"', "garbage", '"0"'])
async def test_update_task_with_a_made_up_etag_is_aborted(
    tasks: Tasks, project: resources_pb2.Project, etag: str
) -> None:
    created = await create_task(tasks, project.id)

    failure = await expect_failure(
        update_task_call(tasks, resources_pb2.Task(id=created.id, title="x", etag=etag), ["title"]),
        ABORTED,
    )

    assert failure.info.reason == "ETAG_MISMATCH"
    assert await get_task(tasks, created.id) == created


async def test_update_project_with_a_stale_etag_is_aborted(projects: Projects) -> None:
    created = await new_project(projects)
    current = await update_project_call(
        projects, resources_pb2.Project(id=created.id, description="first"), ["description"]
    )

    failure = await expect_failure(
        update_project_call(
            projects,
            resources_pb2.Project(id=created.id, description="second", etag=created.etag),
            ["description"],
        ),
        ABORTED,
    )

    assert failure.info.reason == "ETAG_MISMATCH"
    assert await get_project(projects, created.id) == current
    ok = await update_project_call(
        projects,
        resources_pb2.Project(id=created.id, description="second", etag=current.etag),
        ["description"],
    )
    assert ok.description == "second"


async def test_update_worker_with_a_stale_etag_is_aborted(workers: Workers) -> None:
    created = await new_worker(workers)
    current = await update_worker_call(
        workers, resources_pb2.Worker(id=created.id, name="First"), ["name"]
    )

    failure = await expect_failure(
        update_worker_call(
            workers, resources_pb2.Worker(id=created.id, name="Second", etag=created.etag), ["name"]
        ),
        ABORTED,
    )

    assert failure.info.reason == "ETAG_MISMATCH"
    assert await get_worker(workers, created.id) == current
    ok = await update_worker_call(
        workers, resources_pb2.Worker(id=created.id, name="Second", etag=current.etag), ["name"]
    )
    assert ok.name == "Second"


async def test_without_an_etag_the_last_write_wins(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    # Two clients that both read `created`, neither sending the etag: both succeed.
    await update_task(tasks, resources_pb2.Task(id=created.id, title="first"), ["title"])
    second = await update_task(tasks, resources_pb2.Task(id=created.id, title="second"), ["title"])

    assert second.title == "second"
    assert (await get_task(tasks, created.id)).title == "second"


# --- Delete and Undelete: the etag travels on the request ----------------------------------


async def test_delete_task_with_a_stale_etag_is_aborted_and_keeps_the_task(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    current = await update_task(tasks, resources_pb2.Task(id=created.id, title="t"), ["title"])

    failure = await expect_failure(delete_task(tasks, created.id, etag=created.etag), ABORTED)

    assert failure.info.reason == "ETAG_MISMATCH"
    assert await get_task(tasks, created.id) == current
    deleted = await delete_task(tasks, created.id, etag=current.etag)
    assert deleted.HasField("delete_time")


async def test_undelete_task_with_a_stale_etag_is_aborted_and_keeps_it_deleted(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    deleted = await delete_task(tasks, created.id)

    failure = await expect_failure(undelete_task(tasks, created.id, etag=created.etag), ABORTED)

    assert failure.info.reason == "ETAG_MISMATCH"
    assert await get_task(tasks, created.id) == deleted
    restored = await undelete_task(tasks, created.id, etag=deleted.etag)
    assert not restored.HasField("delete_time")


async def test_delete_project_with_a_stale_etag_is_aborted(projects: Projects) -> None:
    created = await new_project(projects)
    current = await update_project_call(
        projects, resources_pb2.Project(id=created.id, description="d"), ["description"]
    )
    request = project_service_pb2.DeleteProjectRequest(id=created.id, etag=created.etag)

    failure = await expect_failure(projects.DeleteProject(request), ABORTED)

    assert failure.info.reason == "ETAG_MISMATCH"
    assert await get_project(projects, created.id) == current
    await projects.DeleteProject(
        project_service_pb2.DeleteProjectRequest(id=created.id, etag=current.etag)
    )
    await expect_failure(get_project(projects, created.id), grpc.StatusCode.NOT_FOUND)


async def test_delete_worker_with_a_stale_etag_is_aborted(workers: Workers) -> None:
    created = await new_worker(workers)
    current = await update_worker_call(
        workers, resources_pb2.Worker(id=created.id, name="Renamed"), ["name"]
    )
    request = worker_service_pb2.DeleteWorkerRequest(id=created.id, etag=created.etag)

    failure = await expect_failure(workers.DeleteWorker(request), ABORTED)

    assert failure.info.reason == "ETAG_MISMATCH"
    assert await get_worker(workers, created.id) == current
    await workers.DeleteWorker(
        worker_service_pb2.DeleteWorkerRequest(id=created.id, etag=current.etag)
    )
    await expect_failure(get_worker(workers, created.id), grpc.StatusCode.NOT_FOUND)


# --- no lost updates under concurrent read-modify-write ------------------------------------

CLIENTS = 20
INCREMENTS = 10


async def _read_modify_write(
    tasks: Tasks,
    task_id: int,
    modify: Callable[[resources_pb2.Task], resources_pb2.Task],
    paths: list[str],
) -> int:
    """One increment: read, modify, write with the etag; re-read and retry on ABORTED.

    Returns how many attempts were aborted.
    """
    aborted = 0
    while True:
        current = await get_task(tasks, task_id)
        change = modify(current)
        change.id, change.etag = task_id, current.etag
        try:
            await update_task(tasks, change, paths)
        except grpc.aio.AioRpcError as error:
            if error.code() != ABORTED:
                raise
            aborted += 1
            continue
        return aborted


async def _run_clients(
    clients: int, increments: int, increment: Callable[[int, int], Awaitable[int]]
) -> int:
    async def client(number: int) -> int:
        return sum([await increment(number, step) for step in range(increments)])

    async with asyncio.timeout(DEADLINE * 3):
        aborted = await asyncio.gather(*(client(number) for number in range(clients)))
    return sum(aborted)


async def test_concurrent_read_modify_write_with_etags_loses_no_update(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    # Each client appends a unique line to the description (tags hold at most 64 values,
    # too few for 200 increments; see the tags variant below).
    created = await create_task(tasks, project.id, description="")

    def appending(line: str) -> Callable[[resources_pb2.Task], resources_pb2.Task]:
        def modify(current: resources_pb2.Task) -> resources_pb2.Task:
            return resources_pb2.Task(description=current.description + line + "\n")

        return modify

    async def increment(client: int, step: int) -> int:
        modify = appending(f"client-{client}-step-{step}")
        return await _read_modify_write(tasks, created.id, modify, ["description"])

    aborted = await _run_clients(CLIENTS, INCREMENTS, increment)

    lines = (await get_task(tasks, created.id)).description.splitlines()
    expected = {f"client-{c}-step-{s}" for c in range(CLIENTS) for s in range(INCREMENTS)}
    assert len(lines) == CLIENTS * INCREMENTS
    assert set(lines) == expected
    assert aborted > 0, "the clients never raced; the test proved nothing"


async def test_concurrent_tag_appends_with_etags_lose_no_tag(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    # 16 clients x 4 appends = 64 tags, the most a task may carry.
    clients, increments = 16, 4
    created = await create_task(tasks, project.id)

    async def increment(client: int, step: int) -> int:
        def modify(current: resources_pb2.Task) -> resources_pb2.Task:
            return resources_pb2.Task(tags=[*current.tags, f"c{client}-s{step}"])

        return await _read_modify_write(tasks, created.id, modify, ["tags"])

    aborted = await _run_clients(clients, increments, increment)

    tags = list((await get_task(tasks, created.id)).tags)
    assert sorted(tags) == sorted(f"c{c}-s{s}" for c in range(clients) for s in range(increments))
    assert aborted > 0, "the clients never raced; the test proved nothing"


async def test_a_task_holds_at_most_64_tags(tasks: Tasks, project: resources_pb2.Project) -> None:
    # Why the tags variant stops at 64 (resources.proto: "at most 64"), not 200.
    created = await create_task(tasks, project.id, tags=[f"t{i}" for i in range(64)])

    failure = await expect_failure(
        update_task_call(
            tasks, resources_pb2.Task(id=created.id, tags=[*created.tags, unique("t")]), ["tags"]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    assert failure.fields == ["task.tags"]
