"""ListTasks/ListProjects pagination (AIP-158): keyset tokens, sizes, binding, consistency."""

from __future__ import annotations

import asyncio
import base64

import grpc
import pytest

from taskmanager.v1 import project_service_pb2, task_service_pb2
from tests.conftest import create_task
from tests.rpc_errors import expect_failure
from tests.seeding import seed_tasks

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def walk(tasks, request: task_service_pb2.ListTasksRequest) -> list[list[int]]:
    """Every page of `request`, as lists of ids."""
    pages: list[list[int]] = []
    while True:
        response = await tasks.ListTasks(request)
        pages.append([task.id for task in response.tasks])
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token


async def test_page_size_zero_means_fifty(tasks, project, server):
    await seed_tasks(server, project.id, 60)
    response = await tasks.ListTasks(task_service_pb2.ListTasksRequest(project_id=project.id))
    assert len(response.tasks) == 50
    assert response.next_page_token


async def test_page_size_above_maximum_is_clamped_to_1000(tasks, project, server):
    await seed_tasks(server, project.id, 1001)
    request = task_service_pb2.ListTasksRequest(project_id=project.id, page_size=5000)
    first = await tasks.ListTasks(request)
    assert len(first.tasks) == 1000
    request.page_token = first.next_page_token
    second = await tasks.ListTasks(request)
    assert len(second.tasks) == 1
    assert second.next_page_token == ""


async def test_negative_page_size_is_invalid(tasks, project):
    request = task_service_pb2.ListTasksRequest(project_id=project.id, page_size=-1)
    failure = await expect_failure(tasks.ListTasks(request), INVALID)
    assert failure.fields == ["page_size"]


async def test_next_page_token_is_empty_exactly_at_the_end(tasks, project, server):
    ids = await seed_tasks(server, project.id, 6)
    pages = await walk(tasks, task_service_pb2.ListTasksRequest(project_id=project.id, page_size=3))
    assert [len(page) for page in pages] == [3, 3]
    assert sorted(sum(pages, [])) == sorted(ids)


async def test_walking_all_pages_returns_every_row_once_in_order(tasks, project, server):
    ids = await seed_tasks(server, project.id, 23)
    request = task_service_pb2.ListTasksRequest(
        project_id=project.id, page_size=5, order_by="create_time"
    )
    pages = await walk(tasks, request)
    assert sum(pages, []) == ids  # seeded with increasing create_time


async def test_changed_page_size_is_honoured(tasks, project, server):
    ids = await seed_tasks(server, project.id, 10)
    request = task_service_pb2.ListTasksRequest(
        project_id=project.id, page_size=2, order_by="create_time"
    )
    first = await tasks.ListTasks(request)
    request.page_size, request.page_token = 5, first.next_page_token
    second = await tasks.ListTasks(request)
    assert [t.id for t in second.tasks] == ids[2:7]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("order_by", "priority desc"),
        ("title_contains", "other"),
        ("statuses", [1]),
        ("view", 2),
        ("top_level_only", True),
        ("show_deleted", True),
    ],
)
async def test_page_token_rejected_when_filter_changes(tasks, project, server, field, value):
    await seed_tasks(server, project.id, 4)
    request = task_service_pb2.ListTasksRequest(project_id=project.id, page_size=2)
    token = (await tasks.ListTasks(request)).next_page_token
    changed = task_service_pb2.ListTasksRequest(
        project_id=project.id, page_size=2, page_token=token
    )
    if isinstance(value, list):
        getattr(changed, field).extend(value)
    else:
        setattr(changed, field, value)
    failure = await expect_failure(tasks.ListTasks(changed), INVALID)
    assert failure.fields == ["page_token"]
    assert failure.info.reason == "INVALID_PAGE_TOKEN"


async def test_page_token_rejected_for_another_project(tasks, projects, project, server):
    other = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(project={"name": f"other-{project.name}"})
    )
    await seed_tasks(server, project.id, 4)
    token = (
        await tasks.ListTasks(task_service_pb2.ListTasksRequest(project_id=project.id, page_size=2))
    ).next_page_token
    request = task_service_pb2.ListTasksRequest(project_id=other.id, page_size=2, page_token=token)
    await expect_failure(tasks.ListTasks(request), INVALID)


async def test_page_token_of_another_method_is_rejected(tasks, projects, project, server):
    for index in range(3):
        await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(project={"name": f"{project.name}-{index}"})
        )
    token = (
        await projects.ListProjects(project_service_pb2.ListProjectsRequest(page_size=1))
    ).next_page_token
    failure = await expect_failure(
        tasks.ListTasks(task_service_pb2.ListTasksRequest(page_token=token)), INVALID
    )
    assert failure.fields == ["page_token"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "padded", "empty-json"])
async def test_damaged_page_token_is_invalid_argument(tasks, project, server, damage):
    await seed_tasks(server, project.id, 4)
    request = task_service_pb2.ListTasksRequest(project_id=project.id, page_size=2)
    token = (await tasks.ListTasks(request)).next_page_token
    middle = len(token) // 2
    damaged = {
        "garbage": "not a token at all!",
        "truncated": token[:-7],
        "flipped": token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :],
        "padded": token + "AAAA",
        "empty-json": base64.urlsafe_b64encode(b"{}").decode(),
    }[damage]
    request.page_token = damaged
    failure = await expect_failure(tasks.ListTasks(request), INVALID)
    assert failure.fields == ["page_token"]


async def test_page_token_is_opaque(tasks, project, server):
    await seed_tasks(server, project.id, 4)
    request = task_service_pb2.ListTasksRequest(project_id=project.id, page_size=2)
    token = (await tasks.ListTasks(request)).next_page_token
    decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for readable in (b"create_time", b'"v":', b'"q":', b'"k":'):
        assert readable not in decoded
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


async def test_deep_pages_cost_the_same_statements_as_the_first(tasks, project, server, statements):
    await seed_tasks(server, project.id, 40)
    request = task_service_pb2.ListTasksRequest(project_id=project.id, page_size=5)
    counts = []
    offsets: list[object] = []
    while True:
        statements.statements.clear()
        statements.parameters.clear()
        response = await tasks.ListTasks(request)
        counts.append(statements.count)
        for text, parameters in zip(statements.statements, statements.parameters, strict=True):
            if "OFFSET" in text.upper():  # SQLAlchemy's SQLite LIMIT is always "LIMIT ? OFFSET ?"
                offsets.append(parameters[-1])
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    assert len(counts) == 8
    assert len(set(counts)) == 1
    assert all(offset == 0 for offset in offsets), "pages must seek by key, never skip rows"


async def test_pages_under_concurrent_inserts_and_deletes_return_stable_rows_once(
    tasks, project, server
):
    stable = set(await seed_tasks(server, project.id, 60))
    doomed = [(await create_task(tasks, project.id)).id for _ in range(20)]
    stable -= set(doomed)
    request = task_service_pb2.ListTasksRequest(project_id=project.id, page_size=7)
    seen: list[int] = []

    async def churn() -> None:
        for task_id in doomed:
            await create_task(tasks, project.id)
            await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=task_id))

    writer = asyncio.create_task(churn())
    while True:
        response = await tasks.ListTasks(request)
        seen.extend(task.id for task in response.tasks)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
        await asyncio.sleep(0)  # let the writer interleave between pages
    await writer
    assert len(seen) == len(set(seen)), "a row was returned twice"
    assert stable <= set(seen), "a row that existed throughout was skipped"


async def test_show_deleted_pages_keep_rows_soft_deleted_during_the_walk_once(
    tasks, project, server
):
    rows = await seed_tasks(server, project.id, 30)
    request = task_service_pb2.ListTasksRequest(
        project_id=project.id, page_size=4, show_deleted=True
    )
    seen: list[int] = []
    deleted: list[int] = []
    while True:
        response = await tasks.ListTasks(request)
        seen.extend(task.id for task in response.tasks)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
        # A soft delete is a write but moves no sort key: the row stays where it was.
        # Delete rows behind the walk (already seen) and ahead of it (the oldest, last).
        doomed = seen[len(deleted)] if len(deleted) % 2 == 0 else rows[len(deleted)]
        await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=doomed))
        deleted.append(doomed)
    assert sorted(seen) == sorted(rows)
    assert len(deleted) == 7  # 8 pages of at most 4
    live = await walk(tasks, task_service_pb2.ListTasksRequest(project_id=project.id))
    assert sorted(task_id for page in live for task_id in page) == sorted(set(rows) - set(deleted))


async def test_list_projects_pages_by_id(projects, project):
    for index in range(4):
        await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(project={"name": f"{project.name}-p{index}"})
        )
    request = project_service_pb2.ListProjectsRequest(page_size=2)
    seen: list[int] = []
    while True:
        response = await projects.ListProjects(request)
        seen.extend(p.id for p in response.projects)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert project.id in seen
