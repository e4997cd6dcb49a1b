"""Task trees: parents in the same project, no cycles, not even under concurrent re-parenting."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from taskmanager.v1 import resources_pb2
from tests.conftest import create_task
from tests.rpc_errors import expect_failure, read_failure
from tests.safe_writes import (
    DEADLINE,
    Projects,
    Tasks,
    get_task,
    list_tasks,
    new_project,
    update_task,
    update_task_call,
)

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _move(tasks: Tasks, task_id: int, parent_id: int | None):  # type: ignore[no-untyped-def]
    task = resources_pb2.Task(id=task_id)
    if parent_id is not None:
        task.parent_task_id = parent_id
    return update_task_call(tasks, task, ["parent_task_id"])


async def _assert_no_cycle(tasks: Tasks, project_id: int) -> None:
    """Walking parents from every task of the project ends at a top-level task."""
    everything = await list_tasks(tasks, project_id, show_deleted=True)
    parent_of = {
        task.id: (task.parent_task_id if task.HasField("parent_task_id") else None)
        for task in everything
    }
    for start in parent_of:
        seen: list[int] = []
        current: int | None = start
        while current is not None:
            assert current not in seen, f"cycle in the stored tree: {[*seen, current]}"
            seen.append(current)
            current = parent_of[current]


# --- parents must be in the same project ---------------------------------------------------


async def test_a_parent_in_another_project_fails_precondition_on_create(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    elsewhere = await create_task(tasks, (await new_project(projects)).id)

    failure = await expect_failure(
        create_task(tasks, project.id, parent_task_id=elsewhere.id), FAILED_PRECONDITION
    )

    assert failure.info.reason == "PARENT_IN_OTHER_PROJECT"
    assert await list_tasks(tasks, project.id) == []


async def test_a_parent_in_another_project_fails_precondition_on_update(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    elsewhere = await create_task(tasks, (await new_project(projects)).id)
    task = await create_task(tasks, project.id)

    failure = await expect_failure(_move(tasks, task.id, elsewhere.id), FAILED_PRECONDITION)

    assert failure.info.reason == "PARENT_IN_OTHER_PROJECT"
    assert await get_task(tasks, task.id) == task


# --- no cycles -----------------------------------------------------------------------------


async def test_moving_a_task_under_itself_is_a_task_cycle(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    task = await create_task(tasks, project.id)

    failure = await expect_failure(_move(tasks, task.id, task.id), FAILED_PRECONDITION)

    assert failure.info.reason == "TASK_CYCLE"
    assert await get_task(tasks, task.id) == task


@pytest.mark.parametrize("depth", [1, 2, 5])
async def test_moving_a_task_under_a_descendant_is_a_task_cycle(
    tasks: Tasks, project: resources_pb2.Project, depth: int
) -> None:
    root = await create_task(tasks, project.id)
    chain = [root]
    for _ in range(depth):
        chain.append(await create_task(tasks, project.id, parent_task_id=chain[-1].id))

    failure = await expect_failure(_move(tasks, root.id, chain[-1].id), FAILED_PRECONDITION)

    assert failure.info.reason == "TASK_CYCLE"
    assert await get_task(tasks, root.id) == root
    await _assert_no_cycle(tasks, project.id)


async def test_a_subtree_can_move_to_another_branch_and_keeps_its_children(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    root = await create_task(tasks, project.id)
    left = await create_task(tasks, project.id, parent_task_id=root.id)
    right = await create_task(tasks, project.id, parent_task_id=root.id)
    leaf = await create_task(tasks, project.id, parent_task_id=left.id)

    moved = await update_task(
        tasks, resources_pb2.Task(id=left.id, parent_task_id=right.id), ["parent_task_id"]
    )

    assert moved.parent_task_id == right.id
    assert (await get_task(tasks, leaf.id)).parent_task_id == left.id
    # `right` is now an ancestor of `leaf`: moving it under `leaf` is a cycle.
    failure = await expect_failure(_move(tasks, right.id, leaf.id), FAILED_PRECONDITION)
    assert failure.info.reason == "TASK_CYCLE"
    await _assert_no_cycle(tasks, project.id)


async def test_after_a_move_the_new_ancestry_is_what_cycles_are_checked_against(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    a = await create_task(tasks, project.id)
    b = await create_task(tasks, project.id)
    await update_task(tasks, resources_pb2.Task(id=a.id, parent_task_id=b.id), ["parent_task_id"])

    failure = await expect_failure(_move(tasks, b.id, a.id), FAILED_PRECONDITION)
    assert failure.info.reason == "TASK_CYCLE"

    await update_task(tasks, resources_pb2.Task(id=a.id), ["parent_task_id"])  # top level again
    moved = await update_task(
        tasks, resources_pb2.Task(id=b.id, parent_task_id=a.id), ["parent_task_id"]
    )
    assert moved.parent_task_id == a.id


# --- concurrent re-parenting ---------------------------------------------------------------

PROJECTS = 4
PAIRS_PER_PROJECT = 4


async def _outcome(call: object) -> grpc.aio.AioRpcError | None:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def _opposite_moves(
    tasks: Tasks, pairs: list[tuple[int, int]]
) -> list[tuple[grpc.aio.AioRpcError | None, grpc.aio.AioRpcError | None]]:
    """For every pair at once: "move a under b" and "move b under a"."""
    async with asyncio.timeout(DEADLINE):
        outcomes = await asyncio.gather(
            *(_outcome(_move(tasks, x, y)) for a, b in pairs for x, y in ((a, b), (b, a)))
        )
    return list(zip(outcomes[0::2], outcomes[1::2], strict=True))


async def test_concurrent_opposite_moves_never_both_succeed_and_leave_no_cycle(
    tasks: Tasks, projects: Projects
) -> None:
    project_ids = [(await new_project(projects)).id for _ in range(PROJECTS)]
    pairs = [
        ((await create_task(tasks, pid)).id, (await create_task(tasks, pid)).id)
        for pid in project_ids
        for _ in range(PAIRS_PER_PROJECT)
    ]

    results = await _opposite_moves(tasks, pairs)

    for (a, b), outcome in zip(pairs, results, strict=True):
        failures = [error for error in outcome if error is not None]
        assert failures, f"both {a} under {b} and {b} under {a} succeeded"
        # A loser is refused (cycle) or told to retry; never an internal error.
        for failure in failures:
            assert failure.code() in (FAILED_PRECONDITION, grpc.StatusCode.ABORTED), failure
    for pid in project_ids:
        await _assert_no_cycle(tasks, pid)


async def test_concurrent_moves_around_a_ring_leave_no_cycle(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    ring = [(await create_task(tasks, project.id)).id for _ in range(6)]

    async with asyncio.timeout(DEADLINE):
        outcomes = await asyncio.gather(
            *(_outcome(_move(tasks, ring[i], ring[(i + 1) % len(ring)])) for i in range(len(ring)))
        )

    assert any(outcome is not None for outcome in outcomes), "every move of the ring succeeded"
    await _assert_no_cycle(tasks, project.id)


async def test_concurrent_moves_closing_a_cycle_through_a_third_task_never_both_succeed(
    tasks: Tasks, projects: Projects
) -> None:
    # c -> b (b is c's child) and a alone. "a under b" and "c under a" each look fine on
    # their own; together they would close the cycle a -> b -> c -> a.
    triples: list[tuple[int, int, int, int]] = []  # (project, a, b, c)
    for _ in range(PROJECTS):
        pid = (await new_project(projects)).id
        for _ in range(PAIRS_PER_PROJECT):
            top = await create_task(tasks, pid)
            below = await create_task(tasks, pid, parent_task_id=top.id)
            alone = await create_task(tasks, pid)
            triples.append((pid, alone.id, below.id, top.id))

    async with asyncio.timeout(DEADLINE):
        outcomes = await asyncio.gather(
            *(_outcome(_move(tasks, x, y)) for _, a, b, c in triples for x, y in ((a, b), (c, a)))
        )

    for (_, a, b, c), outcome in zip(
        triples, zip(outcomes[0::2], outcomes[1::2], strict=True), strict=True
    ):
        assert any(error is not None for error in outcome), f"{a} under {b} and {c} under {a}"
        for error in outcome:
            if error is not None:
                assert error.code() in (FAILED_PRECONDITION, grpc.StatusCode.ABORTED), error
    for pid in {triple[0] for triple in triples}:
        await _assert_no_cycle(tasks, pid)


async def test_the_loser_of_concurrent_opposite_moves_is_told_task_cycle(
    tasks: Tasks, projects: Projects
) -> None:
    pairs = []
    for _ in range(4):
        pid = (await new_project(projects)).id
        pairs.append(((await create_task(tasks, pid)).id, (await create_task(tasks, pid)).id))

    results = await _opposite_moves(tasks, pairs)

    for outcome in results:
        failures = [error for error in outcome if error is not None]
        assert len(failures) == 1
        # Serialised re-parenting: the second move sees the first and is a cycle.
        failure = read_failure(failures[0], FAILED_PRECONDITION)
        assert failure.info.reason == "TASK_CYCLE"
