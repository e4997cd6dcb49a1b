"""ListTasks: every filter alone and combined, ordering with ties, paging, N+1 on FULL view.

Tests share one database per backend, so every query is scoped to a project of
the test's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from tests.conftest import StatementCounter, create_task, unique
from tests.rpc_errors import expect_failure

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

Stub = task_service_pb2_grpc.TaskServiceStub
Task = resources_pb2.Task

PENDING = resources_pb2.TASK_STATUS_PENDING
IN_PROGRESS = resources_pb2.TASK_STATUS_IN_PROGRESS
BLOCKED = resources_pb2.TASK_STATUS_BLOCKED
DONE = resources_pb2.TASK_STATUS_DONE
CANCELLED = resources_pb2.TASK_STATUS_CANCELLED
LOW = resources_pb2.TASK_PRIORITY_LOW
MEDIUM = resources_pb2.TASK_PRIORITY_MEDIUM
HIGH = resources_pb2.TASK_PRIORITY_HIGH
URGENT = resources_pb2.TASK_PRIORITY_URGENT
FULL = resources_pb2.TASK_VIEW_FULL

ORDERS = (
    "create_time",
    "create_time desc",
    "update_time",
    "update_time desc",
    "priority",
    "priority desc",
    "title",
    "title desc",
)


# --------------------------------------------------------------------------- helpers


async def list_page(tasks: Stub, **fields: Any) -> task_service_pb2.ListTasksResponse:
    """One ListTasks call."""
    response: task_service_pb2.ListTasksResponse = await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(**fields)
    )
    return response


async def list_all(tasks: Stub, **fields: Any) -> list[Task]:
    """Every matching task, in server order, in one big page (asserted to be the last)."""
    fields.setdefault("page_size", 1000)
    response = await list_page(tasks, **fields)
    assert response.next_page_token == "", "test datasets fit in one page"
    return list(response.tasks)


async def ids_of(tasks: Stub, **fields: Any) -> set[int]:
    """The ids of every matching task."""
    return {task.id for task in await list_all(tasks, **fields)}


async def gather_limited(
    calls: Sequence[Callable[[], Awaitable[Task]]], limit: int = 16
) -> list[Task]:
    """Run the calls concurrently, at most `limit` at a time, results in call order."""
    gate = asyncio.Semaphore(limit)

    async def run(call: Callable[[], Awaitable[Task]]) -> Task:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(run(call) for call in calls)))


async def new_project(projects: project_service_pb2_grpc.ProjectServiceStub) -> int:
    """A further project of this test's own; its id."""
    created: resources_pb2.Project = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(
            project=resources_pb2.Project(name=unique("project"), description="second")
        )
    )
    return created.id


async def new_worker(workers: worker_service_pb2_grpc.WorkerServiceStub) -> resources_pb2.Worker:
    """A further worker of this test's own."""
    created: resources_pb2.Worker = await workers.CreateWorker(
        worker_service_pb2.CreateWorkerRequest(
            worker=resources_pb2.Worker(name="Bob", email=f"{unique('bob')}@example.com")
        )
    )
    return created


async def update_task(tasks: Stub, task_id: int, **fields: Any) -> Task:
    """Change the given fields of a task."""
    updated: Task = await tasks.UpdateTask(
        task_service_pb2.UpdateTaskRequest(
            task=Task(id=task_id, **fields),
            update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
        )
    )
    return updated


def time_key(value: Any) -> tuple[int, int]:
    """A Timestamp as a sortable tuple."""
    return (value.seconds, value.nanos)


def sort_key(order_by: str) -> Callable[[Task], Any]:
    """The key a task sorts by under `order_by` (the field part only)."""
    name = order_by.split()[0]
    if name in ("create_time", "update_time"):
        return lambda task: time_key(getattr(task, name))
    return lambda task: getattr(task, name)


def expected_order(rows: Sequence[Task], order_by: str) -> list[int]:
    """Ids of `rows` ordered by `order_by`, ties by id in the same direction."""
    key = sort_key(order_by)
    descending = order_by.endswith(" desc")
    ordered = sorted(rows, key=lambda task: (key(task), task.id), reverse=descending)
    return [task.id for task in ordered]


# --------------------------------------------------------------------------- dataset


@dataclass
class Dataset:
    """A small project with known statuses, priorities, assignees, parents, tags, titles.

    Tree: alpha -> (delta -> grand, epsilon); beta -> sub_beta; gamma; zeta.
    """

    project_id: int
    ada: int
    bob: int
    alpha: Task
    beta: Task
    gamma: Task
    zeta: Task
    delta: Task
    epsilon: Task
    sub_beta: Task
    grand: Task

    @property
    def all_ids(self) -> set[int]:
        return {
            t.id
            for t in (
                self.alpha,
                self.beta,
                self.gamma,
                self.zeta,
                self.delta,
                self.epsilon,
                self.sub_beta,
                self.grand,
            )
        }


@pytest.fixture
async def data(
    tasks: Stub,
    workers: worker_service_pb2_grpc.WorkerServiceStub,
    project: resources_pb2.Project,
    worker: resources_pb2.Worker,
) -> Dataset:
    """The dataset in this test's own project."""
    ada = worker.id
    bob = (await new_worker(workers)).id
    pid = project.id
    alpha, beta, gamma, zeta = await asyncio.gather(
        create_task(
            tasks,
            pid,
            title="Alpha Report",
            status=PENDING,
            priority=LOW,
            tags=["red", "blue"],
            assignee_id=ada,
        ),
        create_task(
            tasks,
            pid,
            title="beta review",
            status=IN_PROGRESS,
            priority=HIGH,
            tags=["red"],
            assignee_id=bob,
        ),
        create_task(
            tasks,
            pid,
            title="Gamma 100% done",
            status=DONE,
            priority=URGENT,
            tags=['a"b', "%", "back\\slash"],
        ),
        create_task(
            tasks,
            pid,
            title="zeta 100 percent deltaxx",
            status=DONE,
            priority=MEDIUM,
            tags=["ab", "a_b"],
        ),
    )
    delta, epsilon, sub_beta = await asyncio.gather(
        create_task(
            tasks,
            pid,
            title="delta_x",
            status=BLOCKED,
            priority=MEDIUM,
            tags=["blue"],
            assignee_id=ada,
            parent_task_id=alpha.id,
        ),
        create_task(
            tasks,
            pid,
            title="epsilon",
            status=CANCELLED,
            priority=HIGH,
            tags=["red", "blue", "green"],
            parent_task_id=alpha.id,
        ),
        create_task(
            tasks,
            pid,
            title="Subtask of beta/2",
            status=PENDING,
            priority=MEDIUM,
            assignee_id=bob,
            parent_task_id=beta.id,
        ),
    )
    grand = await create_task(
        tasks,
        pid,
        title="grandchild",
        status=IN_PROGRESS,
        priority=LOW,
        tags=["green"],
        assignee_id=ada,
        parent_task_id=delta.id,
    )
    return Dataset(pid, ada, bob, alpha, beta, gamma, zeta, delta, epsilon, sub_beta, grand)


# --------------------------------------------------------------------------- each filter alone


async def test_without_filters_a_project_lists_all_its_tasks(tasks: Stub, data: Dataset) -> None:
    assert await ids_of(tasks, project_id=data.project_id) == data.all_ids


async def test_project_id_filter_returns_only_that_projects_tasks(
    tasks: Stub, projects: project_service_pb2_grpc.ProjectServiceStub, data: Dataset
) -> None:
    other = await new_project(projects)
    mine, theirs = await asyncio.gather(
        create_task(tasks, other, title="Alpha Report", tags=["red", "blue"]),
        create_task(tasks, other, title="beta review", tags=["red"]),
    )

    assert await ids_of(tasks, project_id=data.project_id) == data.all_ids
    assert await ids_of(tasks, project_id=other) == {mine.id, theirs.id}
    # The same filters without the project see both projects' matching tasks.
    assert {data.alpha.id, mine.id} <= await ids_of(tasks, title_contains="Alpha Report")
    assert await ids_of(tasks, project_id=other, title_contains="Alpha Report") == {mine.id}


async def test_project_id_filter_of_a_project_without_tasks_returns_nothing(
    tasks: Stub, projects: project_service_pb2_grpc.ProjectServiceStub
) -> None:
    empty = await new_project(projects)
    response = await list_page(tasks, project_id=empty)
    assert list(response.tasks) == []
    assert response.next_page_token == ""


async def test_statuses_filter_matches_tasks_in_any_given_status(
    tasks: Stub, data: Dataset
) -> None:
    pid = data.project_id
    assert await ids_of(tasks, project_id=pid, statuses=[DONE]) == {data.gamma.id, data.zeta.id}
    assert await ids_of(tasks, project_id=pid, statuses=[PENDING]) == {
        data.alpha.id,
        data.sub_beta.id,
    }
    assert await ids_of(tasks, project_id=pid, statuses=[IN_PROGRESS, BLOCKED]) == {
        data.beta.id,
        data.grand.id,
        data.delta.id,
    }
    assert await ids_of(tasks, project_id=pid, statuses=[CANCELLED]) == {data.epsilon.id}
    all_statuses = [PENDING, IN_PROGRESS, BLOCKED, DONE, CANCELLED]
    assert await ids_of(tasks, project_id=pid, statuses=all_statuses) == data.all_ids


async def test_priorities_filter_matches_tasks_with_any_given_priority(
    tasks: Stub, data: Dataset
) -> None:
    pid = data.project_id
    assert await ids_of(tasks, project_id=pid, priorities=[URGENT]) == {data.gamma.id}
    assert await ids_of(tasks, project_id=pid, priorities=[LOW]) == {data.alpha.id, data.grand.id}
    assert await ids_of(tasks, project_id=pid, priorities=[HIGH, MEDIUM]) == {
        data.beta.id,
        data.epsilon.id,
        data.zeta.id,
        data.delta.id,
        data.sub_beta.id,
    }


async def test_assignee_id_filter_matches_tasks_assigned_to_that_worker(
    tasks: Stub, workers: worker_service_pb2_grpc.WorkerServiceStub, data: Dataset
) -> None:
    pid = data.project_id
    assert await ids_of(tasks, project_id=pid, assignee_id=data.ada) == {
        data.alpha.id,
        data.delta.id,
        data.grand.id,
    }
    assert await ids_of(tasks, project_id=pid, assignee_id=data.bob) == {
        data.beta.id,
        data.sub_beta.id,
    }
    idle = await new_worker(workers)
    assert await ids_of(tasks, project_id=pid, assignee_id=idle.id) == set()


async def test_unassigned_filter_matches_tasks_without_assignee(tasks: Stub, data: Dataset) -> None:
    assert await ids_of(tasks, project_id=data.project_id, unassigned=True) == {
        data.gamma.id,
        data.zeta.id,
        data.epsilon.id,
    }


async def test_unassigned_false_does_not_filter(tasks: Stub, data: Dataset) -> None:
    assert await ids_of(tasks, project_id=data.project_id, unassigned=False) == data.all_ids


async def test_parent_task_id_filter_matches_direct_subtasks_only(
    tasks: Stub, data: Dataset
) -> None:
    pid = data.project_id
    assert await ids_of(tasks, project_id=pid, parent_task_id=data.alpha.id) == {
        data.delta.id,
        data.epsilon.id,
    }
    assert await ids_of(tasks, project_id=pid, parent_task_id=data.delta.id) == {data.grand.id}
    assert await ids_of(tasks, project_id=pid, parent_task_id=data.beta.id) == {data.sub_beta.id}
    assert await ids_of(tasks, project_id=pid, parent_task_id=data.gamma.id) == set()


async def test_top_level_only_filter_matches_tasks_without_parent(
    tasks: Stub, data: Dataset
) -> None:
    assert await ids_of(tasks, project_id=data.project_id, top_level_only=True) == {
        data.alpha.id,
        data.beta.id,
        data.gamma.id,
        data.zeta.id,
    }


async def test_tags_filter_matches_tasks_carrying_all_given_tags(
    tasks: Stub, data: Dataset
) -> None:
    pid = data.project_id
    # beta carries only "red" and delta only "blue": both are excluded.
    assert await ids_of(tasks, project_id=pid, tags=["red", "blue"]) == {
        data.alpha.id,
        data.epsilon.id,
    }
    assert await ids_of(tasks, project_id=pid, tags=["blue", "red"]) == {
        data.alpha.id,
        data.epsilon.id,
    }
    assert await ids_of(tasks, project_id=pid, tags=["red"]) == {
        data.alpha.id,
        data.beta.id,
        data.epsilon.id,
    }
    assert await ids_of(tasks, project_id=pid, tags=["red", "blue", "green"]) == {data.epsilon.id}
    assert await ids_of(tasks, project_id=pid, tags=["green"]) == {data.epsilon.id, data.grand.id}
    assert await ids_of(tasks, project_id=pid, tags=["red", "purple"]) == set()


async def test_tags_filter_matches_whole_tags_not_substrings(tasks: Stub, data: Dataset) -> None:
    pid = data.project_id
    assert await ids_of(tasks, project_id=pid, tags=["re"]) == set()
    assert await ids_of(tasks, project_id=pid, tags=["Red"]) == set()
    assert await ids_of(tasks, project_id=pid, tags=["a"]) == set()


async def test_tags_filter_matches_tags_with_special_characters_literally(
    tasks: Stub, data: Dataset
) -> None:
    pid = data.project_id
    assert await ids_of(tasks, project_id=pid, tags=['a"b']) == {data.gamma.id}
    assert await ids_of(tasks, project_id=pid, tags=["%"]) == {data.gamma.id}
    assert await ids_of(tasks, project_id=pid, tags=["back\\slash"]) == {data.gamma.id}
    assert await ids_of(tasks, project_id=pid, tags=['a"b', "%", "back\\slash"]) == {data.gamma.id}
    # "_" is no wildcard: "a_b" does not match the tag "ab", nor "ab" the tag "a_b".
    assert await ids_of(tasks, project_id=pid, tags=["a_b"]) == {data.zeta.id}
    assert await ids_of(tasks, project_id=pid, tags=["a%b"]) == set()
    assert await ids_of(tasks, project_id=pid, tags=["_"]) == set()


async def test_title_contains_filter_is_case_insensitive(tasks: Stub, data: Dataset) -> None:
    pid = data.project_id
    assert await ids_of(tasks, project_id=pid, title_contains="alpha") == {data.alpha.id}
    assert await ids_of(tasks, project_id=pid, title_contains="ALPHA REPORT") == {data.alpha.id}
    assert await ids_of(tasks, project_id=pid, title_contains="BeTa") == {
        data.beta.id,
        data.sub_beta.id,
    }
    assert await ids_of(tasks, project_id=pid, title_contains="report") == {data.alpha.id}
    assert await ids_of(tasks, project_id=pid, title_contains="no such text") == set()


async def test_title_contains_treats_percent_and_underscore_literally(
    tasks: Stub, data: Dataset
) -> None:
    pid = data.project_id
    # As wildcards, "100%" would also match "zeta 100 percent ..." and "delta_x" "deltaxx".
    assert await ids_of(tasks, project_id=pid, title_contains="100%") == {data.gamma.id}
    assert await ids_of(tasks, project_id=pid, title_contains="%") == {data.gamma.id}
    assert await ids_of(tasks, project_id=pid, title_contains="delta_x") == {data.delta.id}
    assert await ids_of(tasks, project_id=pid, title_contains="_") == {data.delta.id}
    assert await ids_of(tasks, project_id=pid, title_contains="a%d") == set()
    assert await ids_of(tasks, project_id=pid, title_contains="/") == {data.sub_beta.id}
    assert await ids_of(tasks, project_id=pid, title_contains="beta/2") == {data.sub_beta.id}


async def test_title_contains_is_case_insensitive_beyond_ascii(
    tasks: Stub, project: resources_pb2.Project
) -> None:
    apples, school = await asyncio.gather(
        create_task(tasks, project.id, title="ÄPFEL und Birnen"),
        create_task(tasks, project.id, title="ÉCOLE"),
    )
    pid = project.id
    assert await ids_of(tasks, project_id=pid, title_contains="ÄPFEL") == {apples.id}
    assert await ids_of(tasks, project_id=pid, title_contains="äpfel") == {apples.id}
    assert await ids_of(tasks, project_id=pid, title_contains="école") == {school.id}


async def _sequential_tasks(tasks: Stub, project_id: int, count: int) -> list[Task]:
    created = [await create_task(tasks, project_id) for _ in range(count)]
    times = [time_key(task.create_time) for task in created]
    assert times == sorted(times), "created one after another"
    assert len(set(times)) == count, "created one after another"
    return created


async def test_create_time_range_includes_start_and_excludes_end(
    tasks: Stub, project: resources_pb2.Project
) -> None:
    c1, c2, c3, c4 = await _sequential_tasks(tasks, project.id, 4)
    pid = project.id

    def between(start: Task | None, end: Task | None) -> resources_pb2.TimeRange:
        time_range = resources_pb2.TimeRange()
        if start is not None:
            time_range.start_time.CopyFrom(start.create_time)
        if end is not None:
            time_range.end_time.CopyFrom(end.create_time)
        return time_range

    assert await ids_of(tasks, project_id=pid, create_time=between(c2, c4)) == {c2.id, c3.id}
    assert await ids_of(tasks, project_id=pid, create_time=between(c2, c3)) == {c2.id}
    assert await ids_of(tasks, project_id=pid, create_time=between(c3, None)) == {c3.id, c4.id}
    assert await ids_of(tasks, project_id=pid, create_time=between(c4, None)) == {c4.id}
    assert await ids_of(tasks, project_id=pid, create_time=between(None, c2)) == {c1.id}
    assert await ids_of(tasks, project_id=pid, create_time=between(None, c1)) == set()
    assert await ids_of(tasks, project_id=pid, create_time=between(None, None)) == {
        c1.id,
        c2.id,
        c3.id,
        c4.id,
    }


async def test_create_time_range_bounds_keep_their_nanoseconds(
    tasks: Stub, project: resources_pb2.Project
) -> None:
    task = await create_task(tasks, project.id)
    just_after = task.create_time.ToNanoseconds() + 1
    until = resources_pb2.TimeRange()
    until.end_time.FromNanoseconds(just_after)
    since = resources_pb2.TimeRange()
    since.start_time.FromNanoseconds(just_after)
    # create_time < create_time + 1ns: inside [.., T+1ns), outside [T+1ns, ..).
    assert await ids_of(tasks, project_id=project.id, create_time=until) == {task.id}
    assert await ids_of(tasks, project_id=project.id, create_time=since) == set()


async def test_update_time_range_matches_tasks_last_changed_in_interval(
    tasks: Stub, project: resources_pb2.Project
) -> None:
    c1, c2, c3 = await _sequential_tasks(tasks, project.id, 3)
    changed = await update_task(tasks, c1.id, title="changed later")
    assert time_key(changed.update_time) > time_key(c3.update_time)
    pid = project.id

    since_change = resources_pb2.TimeRange(start_time=changed.update_time)
    assert await ids_of(tasks, project_id=pid, update_time=since_change) == {c1.id}
    before_change = resources_pb2.TimeRange(end_time=changed.update_time)
    assert await ids_of(tasks, project_id=pid, update_time=before_change) == {c2.id, c3.id}
    # c1 was created before c2, but it is its last change that counts.
    window = resources_pb2.TimeRange(start_time=c1.create_time, end_time=c3.update_time)
    assert await ids_of(tasks, project_id=pid, update_time=window) == {c2.id}
    assert await ids_of(tasks, project_id=pid, create_time=window) == {c1.id, c2.id}


async def test_combined_filters_must_all_match(tasks: Stub, data: Dataset) -> None:
    pid = data.project_id
    statuses = [PENDING, CANCELLED, BLOCKED]
    assert await ids_of(tasks, project_id=pid, statuses=statuses) == {
        data.alpha.id,
        data.epsilon.id,
        data.delta.id,
        data.sub_beta.id,
    }
    assert await ids_of(tasks, project_id=pid, statuses=statuses, tags=["blue"]) == {
        data.alpha.id,
        data.epsilon.id,
        data.delta.id,
    }
    assert await ids_of(
        tasks, project_id=pid, statuses=statuses, tags=["blue"], assignee_id=data.ada
    ) == {data.alpha.id, data.delta.id}
    assert await ids_of(
        tasks,
        project_id=pid,
        statuses=statuses,
        tags=["blue"],
        assignee_id=data.ada,
        top_level_only=True,
    ) == {data.alpha.id}
    assert await ids_of(
        tasks,
        project_id=pid,
        statuses=statuses,
        tags=["blue"],
        assignee_id=data.ada,
        priorities=[MEDIUM],
        parent_task_id=data.alpha.id,
        title_contains="DELTA",
    ) == {data.delta.id}
    # Each filter alone matches, together nothing does.
    assert await ids_of(tasks, project_id=pid, unassigned=True, tags=["red", "blue"]) == {
        data.epsilon.id
    }
    assert await ids_of(tasks, project_id=pid, unassigned=True, statuses=[PENDING]) == set()


async def test_soft_deleted_tasks_are_left_out_unless_show_deleted_with_any_filter(
    tasks: Stub, data: Dataset
) -> None:
    pid = data.project_id
    for doomed in (data.gamma, data.sub_beta):
        await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=doomed.id))
    live = data.all_ids - {data.gamma.id, data.sub_beta.id}

    assert await ids_of(tasks, project_id=pid) == live
    assert await ids_of(tasks, project_id=pid, show_deleted=True) == data.all_ids
    # show_deleted widens every other filter, and every other filter still applies.
    assert await ids_of(tasks, project_id=pid, statuses=[DONE]) == {data.zeta.id}
    assert await ids_of(tasks, project_id=pid, statuses=[DONE], show_deleted=True) == {
        data.gamma.id,
        data.zeta.id,
    }
    assert await ids_of(tasks, project_id=pid, parent_task_id=data.beta.id) == set()
    assert await ids_of(tasks, project_id=pid, parent_task_id=data.beta.id, show_deleted=True) == {
        data.sub_beta.id
    }
    assert await ids_of(
        tasks, project_id=pid, assignee_id=data.bob, unassigned=False, show_deleted=True
    ) == {data.beta.id, data.sub_beta.id}
    deleted = await list_all(tasks, project_id=pid, show_deleted=True, statuses=[DONE])
    assert {task.id: task.HasField("delete_time") for task in deleted} == {
        data.gamma.id: True,
        data.zeta.id: False,
    }
    # The FULL view's subtasks are live ones only, with or without show_deleted.
    for show_deleted in (False, True):
        full = await list_all(
            tasks, project_id=pid, top_level_only=True, view=FULL, show_deleted=show_deleted
        )
        subtasks = {task.id: [s.id for s in task.subtasks] for task in full}
        assert subtasks[data.beta.id] == []
        assert subtasks[data.alpha.id] == sorted([data.delta.id, data.epsilon.id])


async def test_tags_filter_is_trimmed_like_stored_tags(tasks: Stub, data: Dataset) -> None:
    pid = data.project_id
    assert await ids_of(tasks, project_id=pid, tags=[" red", "blue "]) == await ids_of(
        tasks, project_id=pid, tags=["red", "blue"]
    )


# --------------------------------------------------------------------------- ordering


@pytest.fixture
async def ordered(tasks: Stub, project: resources_pb2.Project) -> list[Task]:
    """Seven tasks, created one after another, with tied priorities and titles.

    Tasks are then updated in an order unrelated to their ids, so update_time
    order differs from id and create_time order.
    """
    specs = [
        ("bravo", HIGH),
        ("alpha", LOW),
        ("charlie", HIGH),
        ("alpha", URGENT),
        ("bravo", HIGH),
        ("alpha", MEDIUM),
        ("delta", LOW),
    ]
    created = [
        await create_task(tasks, project.id, title=title, priority=priority)
        for title, priority in specs
    ]
    for index in (4, 0, 6, 2):
        await update_task(tasks, created[index].id, description=f"touched {index}")
    rows = await list_all(tasks, project_id=project.id)
    assert len(rows) == len(specs)
    return rows


@pytest.mark.parametrize("order_by", ORDERS)
async def test_order_by_sorts_by_field_with_ties_broken_by_id_in_same_direction(
    tasks: Stub, project: resources_pb2.Project, ordered: list[Task], order_by: str
) -> None:
    listed = await list_all(tasks, project_id=project.id, order_by=order_by)
    assert [task.id for task in listed] == expected_order(ordered, order_by)


async def test_order_by_priority_ranks_low_to_urgent_with_ties_by_id(
    tasks: Stub, project: resources_pb2.Project, ordered: list[Task]
) -> None:
    by_id = sorted(ordered, key=lambda task: task.id)
    ascending = await list_all(tasks, project_id=project.id, order_by="priority")
    assert [task.priority for task in ascending] == [LOW, LOW, MEDIUM, HIGH, HIGH, HIGH, URGENT]
    highs = [task.id for task in by_id if task.priority == HIGH]
    assert [task.id for task in ascending if task.priority == HIGH] == highs
    descending = await list_all(tasks, project_id=project.id, order_by="priority desc")
    assert [task.id for task in descending if task.priority == HIGH] == highs[::-1]
    assert [task.id for task in descending] == [task.id for task in ascending][::-1]


async def test_order_by_title_is_alphabetical_with_ties_by_id(
    tasks: Stub, project: resources_pb2.Project, ordered: list[Task]
) -> None:
    by_id = sorted(ordered, key=lambda task: task.id)
    alphas = [task.id for task in by_id if task.title == "alpha"]
    ascending = await list_all(tasks, project_id=project.id, order_by="title")
    assert [task.title for task in ascending] == [
        "alpha",
        "alpha",
        "alpha",
        "bravo",
        "bravo",
        "charlie",
        "delta",
    ]
    assert [task.id for task in ascending[:3]] == alphas
    descending = await list_all(tasks, project_id=project.id, order_by="title desc")
    assert [task.id for task in descending[-3:]] == alphas[::-1]


async def test_order_by_update_time_follows_last_change_not_creation(
    tasks: Stub, project: resources_pb2.Project, ordered: list[Task]
) -> None:
    by_id = sorted(ordered, key=lambda task: task.id)
    touched_last = [by_id[index].id for index in (4, 0, 6, 2)]
    listed = await list_all(tasks, project_id=project.id, order_by="update_time")
    assert [task.id for task in listed][-4:] == touched_last
    untouched = [by_id[index].id for index in (1, 3, 5)]
    assert [task.id for task in listed][:3] == untouched


async def test_default_order_is_create_time_descending(
    tasks: Stub, project: resources_pb2.Project, ordered: list[Task]
) -> None:
    listed = await list_all(tasks, project_id=project.id)
    newest_first = sorted(ordered, key=lambda task: task.id, reverse=True)
    assert [task.id for task in listed] == [task.id for task in newest_first]
    assert [task.id for task in listed] == expected_order(ordered, "create_time desc")
    explicit = await list_all(tasks, project_id=project.id, order_by="create_time desc")
    assert [task.id for task in explicit] == [task.id for task in listed]


@pytest.mark.parametrize("order_by", ["", *ORDERS])
async def test_walking_pages_of_two_returns_the_same_sequence_as_one_big_page(
    tasks: Stub, project: resources_pb2.Project, ordered: list[Task], order_by: str
) -> None:
    whole = [task.id for task in await list_all(tasks, project_id=project.id, order_by=order_by)]
    walked: list[int] = []
    token = ""
    pages = 0
    while True:
        response = await list_page(
            tasks, project_id=project.id, order_by=order_by, page_size=2, page_token=token
        )
        pages += 1
        assert len(response.tasks) <= 2
        walked.extend(task.id for task in response.tasks)
        token = response.next_page_token
        if not token:
            break
        assert pages <= len(ordered), "paging must end"
    assert walked == whole
    assert pages == 4  # 7 tasks: 2 + 2 + 2 + 1


async def test_paging_with_filters_keeps_them_on_every_page(tasks: Stub, data: Dataset) -> None:
    fields: dict[str, Any] = {
        "project_id": data.project_id,
        "tags": ["red"],
        "order_by": "priority desc",
    }
    whole = [task.id for task in await list_all(tasks, **fields)]
    assert set(whole) == {data.alpha.id, data.beta.id, data.epsilon.id}
    first = await list_page(tasks, page_size=2, **fields)
    second = await list_page(tasks, page_size=2, page_token=first.next_page_token, **fields)
    assert second.next_page_token == ""
    assert [task.id for task in (*first.tasks, *second.tasks)] == whole


# --------------------------------------------------------------------------- invalid filters


async def test_assignee_id_with_unassigned_is_invalid_argument(
    tasks: Stub, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    failure = await expect_failure(
        list_page(tasks, project_id=project.id, assignee_id=worker.id, unassigned=True),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "unassigned" in failure.fields


async def test_parent_task_id_with_top_level_only_is_invalid_argument(
    tasks: Stub, project: resources_pb2.Project
) -> None:
    parent = await create_task(tasks, project.id)
    failure = await expect_failure(
        list_page(tasks, project_id=project.id, parent_task_id=parent.id, top_level_only=True),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "top_level_only" in failure.fields


@pytest.mark.parametrize(
    ("statuses", "field"),
    [([99], "statuses[0]"), ([0], "statuses[0]"), ([PENDING, 42], "statuses[1]")],
)
async def test_unknown_or_unspecified_status_is_invalid_argument_naming_its_index(
    tasks: Stub, project: resources_pb2.Project, statuses: list[int], field: str
) -> None:
    failure = await expect_failure(
        list_page(tasks, project_id=project.id, statuses=statuses),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == [field]


async def test_unknown_priority_is_invalid_argument_naming_its_index(
    tasks: Stub, project: resources_pb2.Project
) -> None:
    failure = await expect_failure(
        list_page(tasks, project_id=project.id, priorities=[HIGH, 17]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == ["priorities[1]"]


@pytest.mark.parametrize("name", ["create_time", "update_time"])
@pytest.mark.parametrize("later_by_seconds", [0, -1])
async def test_time_range_with_start_not_before_end_is_invalid_argument(
    tasks: Stub, project: resources_pb2.Project, name: str, later_by_seconds: int
) -> None:
    time_range = resources_pb2.TimeRange()
    time_range.start_time.FromSeconds(1_700_000_000)
    time_range.end_time.FromSeconds(1_700_000_000 + later_by_seconds)
    failure = await expect_failure(
        list_page(tasks, project_id=project.id, **{name: time_range}),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == [name]


async def test_time_range_one_nanosecond_wide_is_accepted(
    tasks: Stub, project: resources_pb2.Project
) -> None:
    time_range = resources_pb2.TimeRange()
    time_range.start_time.FromNanoseconds(1_700_000_000_000_000_000)
    time_range.end_time.FromNanoseconds(1_700_000_000_000_000_001)
    response = await list_page(tasks, project_id=project.id, create_time=time_range)
    assert list(response.tasks) == []


@pytest.mark.parametrize("order_by", ["id", "priority up", "title desc extra", "status"])
async def test_unsupported_order_by_is_invalid_argument(
    tasks: Stub, project: resources_pb2.Project, order_by: str
) -> None:
    failure = await expect_failure(
        list_page(tasks, project_id=project.id, order_by=order_by),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == ["order_by"]


# --------------------------------------------------------------------------- N+1


async def test_full_view_runs_the_same_number_of_statements_for_10_and_200_tasks(
    tasks: Stub,
    workers: worker_service_pb2_grpc.WorkerServiceStub,
    project: resources_pb2.Project,
    worker: resources_pb2.Worker,
    statements: StatementCounter,
) -> None:
    other = await new_worker(workers)
    assignees = [worker, other]
    parents = await gather_limited(
        [
            lambda i=i: create_task(tasks, project.id, assignee_id=assignees[i % 2].id)
            for i in range(200)
        ]
    )
    children = await gather_limited(
        [
            lambda parent=parent: create_task(tasks, project.id, parent_task_id=parent.id)
            for parent in parents
        ]
    )
    child_of = {child.parent_task_id: child for child in children}
    assignee_of = {parent.id: parent.assignee_id for parent in parents}
    workers_by_id = {w.id: w for w in assignees}
    request = {"project_id": project.id, "top_level_only": True, "view": FULL}

    statements.statements.clear()
    small = await list_page(tasks, page_size=10, **request)
    small_count = statements.count
    statements.statements.clear()
    large = await list_page(tasks, page_size=200, **request)
    large_count = statements.count

    assert len(small.tasks) == 10
    assert len(large.tasks) == 200
    assert {task.id for task in large.tasks} == set(assignee_of)
    assert small_count > 0
    assert large_count == small_count, statements.statements
    for task in (*small.tasks, *large.tasks):
        expected_worker = workers_by_id[assignee_of[task.id]]
        assert task.HasField("assignee")
        assert task.assignee.id == expected_worker.id
        assert task.assignee.email == expected_worker.email
        assert [subtask.id for subtask in task.subtasks] == [child_of[task.id].id]
        assert task.subtasks[0].parent_task_id == task.id
        assert not task.subtasks[0].HasField("assignee")  # subtasks come in the BASIC view


async def test_full_view_lists_subtasks_ordered_by_id_and_basic_view_omits_them(
    tasks: Stub, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    parent = await create_task(tasks, project.id, assignee_id=worker.id)
    children = await gather_limited(
        [lambda: create_task(tasks, project.id, parent_task_id=parent.id) for _ in range(5)]
    )
    alone = await create_task(tasks, project.id)
    full = await list_all(tasks, project_id=project.id, top_level_only=True, view=FULL)
    by_id = {task.id: task for task in full}
    assert set(by_id) == {parent.id, alone.id}
    assert [s.id for s in by_id[parent.id].subtasks] == sorted(c.id for c in children)
    assert by_id[parent.id].assignee.id == worker.id
    assert not by_id[alone.id].HasField("assignee")
    assert list(by_id[alone.id].subtasks) == []

    basic = await list_all(tasks, project_id=project.id, top_level_only=True)
    for task in basic:
        assert not task.HasField("assignee")
        assert list(task.subtasks) == []
