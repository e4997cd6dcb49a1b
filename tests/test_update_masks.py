"""Partial updates (AIP-134) of tasks, projects and workers: what a mask changes, and what not."""

from __future__ import annotations

import grpc
import pytest

from taskmanager.v1 import resources_pb2
from tests.conftest import create_task, unique
from tests.rpc_errors import expect_failure
from tests.safe_writes import (
    Projects,
    Tasks,
    Workers,
    get_project,
    get_task,
    get_worker,
    nanos,
    new_project,
    new_worker,
    update_project_call,
    update_task,
    update_task_call,
    update_worker_call,
)

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OUTPUT_ONLY_TASK_PATHS = ["id", "create_time", "update_time", "etag", "delete_time"]
MUTABLE_TASK_FIELDS = [
    "title",
    "description",
    "status",
    "priority",
    "tags",
    "assignee_id",
    "parent_task_id",
]


async def _rich_task(
    tasks: Tasks, project_id: int, worker_id: int, parent_id: int
) -> resources_pb2.Task:
    """A task with every mutable field set to a non-default value."""
    return await create_task(
        tasks,
        project_id,
        title="before",
        description="before description",
        status=resources_pb2.TASK_STATUS_BLOCKED,
        priority=resources_pb2.TASK_PRIORITY_HIGH,
        tags=["before-1", "before-2"],
        assignee_id=worker_id,
        parent_task_id=parent_id,
    )


def _without(task: resources_pb2.Task, *fields: str) -> resources_pb2.Task:
    """`task` with the given fields (and the per-write output fields) cleared, for comparing."""
    copy = resources_pb2.Task()
    copy.CopyFrom(task)
    for name in (*fields, "update_time", "etag"):
        copy.ClearField(name)
    return copy


# --- tasks: explicit masks -----------------------------------------------------------------


@pytest.mark.parametrize("path", MUTABLE_TASK_FIELDS)
async def test_a_masked_task_field_is_the_only_one_that_changes(
    tasks: Tasks, project: resources_pb2.Project, workers: Workers, path: str
) -> None:
    worker = await new_worker(workers)
    parent = await create_task(tasks, project.id)
    other_parent = await create_task(tasks, project.id)
    other_worker = await new_worker(workers)
    created = await _rich_task(tasks, project.id, worker.id, parent.id)
    # Every field differs from the stored task; only the masked one may be applied.
    request = resources_pb2.Task(
        id=created.id,
        title="after",
        description="after description",
        status=resources_pb2.TASK_STATUS_DONE,
        priority=resources_pb2.TASK_PRIORITY_LOW,
        tags=["after"],
        assignee_id=other_worker.id,
        parent_task_id=other_parent.id,
    )

    updated = await update_task(tasks, request, [path])

    assert getattr(updated, path) == getattr(request, path)
    assert _without(updated, path) == _without(created, path)
    assert await get_task(tasks, created.id) == updated


async def test_a_mask_naming_several_fields_changes_exactly_those(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    parent = await create_task(tasks, project.id)
    created = await _rich_task(tasks, project.id, worker.id, parent.id)

    updated = await update_task(
        tasks,
        resources_pb2.Task(
            id=created.id,
            title="after",
            description="not applied",
            priority=resources_pb2.TASK_PRIORITY_URGENT,
        ),
        ["title", "priority"],
    )

    assert (updated.title, updated.priority) == ("after", resources_pb2.TASK_PRIORITY_URGENT)
    assert _without(updated, "title", "priority") == _without(created, "title", "priority")


async def test_star_replaces_every_mutable_task_field(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    parent = await create_task(tasks, project.id)
    created = await _rich_task(tasks, project.id, worker.id, parent.id)

    # Only title, status and priority are given: everything else is reset to empty.
    updated = await update_task(
        tasks,
        resources_pb2.Task(
            id=created.id,
            title="replaced",
            status=resources_pb2.TASK_STATUS_PENDING,
            priority=resources_pb2.TASK_PRIORITY_LOW,
        ),
        ["*"],
    )

    assert updated.title == "replaced"
    assert updated.status == resources_pb2.TASK_STATUS_PENDING
    assert updated.priority == resources_pb2.TASK_PRIORITY_LOW
    assert updated.description == ""
    assert list(updated.tags) == []
    assert not updated.HasField("assignee_id")
    assert not updated.HasField("parent_task_id")
    assert updated.project_id == project.id
    assert updated.create_time == created.create_time
    assert await get_task(tasks, created.id) == updated


async def test_star_with_a_missing_required_field_is_invalid_and_changes_nothing(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, title="kept", description="kept")

    failure = await expect_failure(
        update_task_call(tasks, resources_pb2.Task(id=created.id, description="x"), ["*"]),
        INVALID,
    )

    # `*` replaces the title too, and an empty title (and unspecified enums) are invalid.
    assert "task.title" in failure.fields
    assert await get_task(tasks, created.id) == created


# --- tasks: no mask ------------------------------------------------------------------------


async def test_without_a_mask_the_fields_set_in_the_request_are_updated(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    parent = await create_task(tasks, project.id)
    created = await _rich_task(tasks, project.id, worker.id, parent.id)

    updated = await update_task(
        tasks, resources_pb2.Task(id=created.id, description="after", tags=["after"])
    )

    assert updated.description == "after"
    assert list(updated.tags) == ["after"]
    # Unset (default) fields in the request are left alone, including the optional ids.
    assert _without(updated, "description", "tags") == _without(created, "description", "tags")
    assert updated.assignee_id == worker.id
    assert updated.parent_task_id == parent.id


# --- tasks: bad and ignored paths ----------------------------------------------------------


@pytest.mark.parametrize("path", ["nope", "tags[0]", "title.text", "assignee.name", "Title"])
async def test_an_unknown_or_indexed_task_path_is_invalid_and_named(
    tasks: Tasks, project: resources_pb2.Project, path: str
) -> None:
    created = await create_task(tasks, project.id)

    failure = await expect_failure(
        update_task_call(tasks, resources_pb2.Task(id=created.id, title="x"), ["title", path]),
        INVALID,
    )

    assert failure.fields == ["update_mask"]
    assert failure.bad_request is not None
    assert path in failure.bad_request.field_violations[0].description
    assert await get_task(tasks, created.id) == created


async def test_output_only_task_paths_are_ignored(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, title="before")
    forged = resources_pb2.Task(id=created.id, title="after")
    forged.delete_time.FromSeconds(9)
    forged.create_time.FromSeconds(1)
    forged.update_time.FromSeconds(1)

    updated = await update_task(tasks, forged, [*OUTPUT_ONLY_TASK_PATHS, "title"])

    assert updated.title == "after"
    assert updated.id == created.id
    assert updated.create_time == created.create_time
    assert nanos(updated, "update_time") > nanos(created, "update_time")
    assert not updated.HasField("delete_time")


async def test_a_mask_of_only_output_only_paths_changes_nothing(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, title="before")

    returned = await update_task(
        tasks, resources_pb2.Task(id=created.id, title="ignored"), OUTPUT_ONLY_TASK_PATHS
    )

    # A no-op: not even update_time or the etag move.
    assert returned == created
    assert await get_task(tasks, created.id) == created


# --- tasks: project_id ---------------------------------------------------------------------


@pytest.mark.parametrize("paths", [["project_id"], ["project_id", "title"], None, ["*"]])
async def test_changing_project_id_is_invalid_however_it_is_requested(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project, paths: list[str] | None
) -> None:
    other = await new_project(projects)
    created = await create_task(tasks, project.id, title="stays")
    request = resources_pb2.Task(
        id=created.id,
        project_id=other.id,
        title="moved",
        status=resources_pb2.TASK_STATUS_DONE,
        priority=resources_pb2.TASK_PRIORITY_LOW,
    )

    failure = await expect_failure(update_task_call(tasks, request, paths), INVALID)

    assert failure.fields == ["task.project_id"]
    assert await get_task(tasks, created.id) == created


async def test_the_same_project_id_in_the_mask_is_fine(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)

    updated = await update_task(
        tasks,
        resources_pb2.Task(id=created.id, project_id=project.id, title="renamed"),
        ["project_id", "title"],
    )

    assert updated.project_id == project.id
    assert updated.title == "renamed"


async def test_a_project_id_outside_the_mask_is_ignored(
    tasks: Tasks, projects: Projects, project: resources_pb2.Project
) -> None:
    other = await new_project(projects)
    created = await create_task(tasks, project.id)

    updated = await update_task(
        tasks, resources_pb2.Task(id=created.id, project_id=other.id, title="renamed"), ["title"]
    )

    assert updated.project_id == project.id
    assert updated.title == "renamed"


# --- tasks: clearing optional references, replacing tags -----------------------------------


async def test_assignee_id_is_cleared_through_the_mask(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    created = await create_task(tasks, project.id, assignee_id=worker.id)

    updated = await update_task(tasks, resources_pb2.Task(id=created.id), ["assignee_id"])

    assert not updated.HasField("assignee_id")
    assert not (await get_task(tasks, created.id)).HasField("assignee_id")


async def test_parent_task_id_is_cleared_through_the_mask(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    parent = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=parent.id)

    updated = await update_task(tasks, resources_pb2.Task(id=child.id), ["parent_task_id"])

    assert not updated.HasField("parent_task_id")
    assert not (await get_task(tasks, child.id)).HasField("parent_task_id")


async def test_an_unset_optional_id_outside_the_mask_is_kept(
    tasks: Tasks, project: resources_pb2.Project, worker: resources_pb2.Worker
) -> None:
    parent = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=parent.id, assignee_id=worker.id)

    updated = await update_task(tasks, resources_pb2.Task(id=child.id, title="t"), ["title"])

    assert updated.assignee_id == worker.id
    assert updated.parent_task_id == parent.id


@pytest.mark.parametrize(
    ("before", "after"),
    [(["a", "b", "c"], ["c", "d"]), (["a", "b"], []), ([], ["x", "y"]), (["a", "b"], ["b", "a"])],
)
async def test_masked_tags_replace_the_whole_list(
    tasks: Tasks, project: resources_pb2.Project, before: list[str], after: list[str]
) -> None:
    created = await create_task(tasks, project.id, tags=before)

    updated = await update_task(tasks, resources_pb2.Task(id=created.id, tags=after), ["tags"])

    assert list(updated.tags) == after
    assert list((await get_task(tasks, created.id)).tags) == after


# --- tasks: tag validation -----------------------------------------------------------------


@pytest.mark.parametrize("tags", [[" a", "a"], ["a", "a "], ["\ta\n", " a "]])
async def test_tags_equal_after_trimming_are_duplicates_on_create(
    tasks: Tasks, project: resources_pb2.Project, tags: list[str]
) -> None:
    failure = await expect_failure(create_task(tasks, project.id, tags=tags), INVALID)

    assert failure.fields == ["task.tags[1]"]


async def test_tags_equal_after_trimming_are_duplicates_on_update(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id, tags=["keep"])

    failure = await expect_failure(
        update_task_call(tasks, resources_pb2.Task(id=created.id, tags=["x", " x "]), ["tags"]),
        INVALID,
    )

    assert failure.fields == ["task.tags[1]"]
    assert await get_task(tasks, created.id) == created


async def test_tags_are_stored_trimmed(tasks: Tasks, project: resources_pb2.Project) -> None:
    created = await create_task(tasks, project.id, tags=["  padded ", "\tx"])
    updated = await update_task(
        tasks, resources_pb2.Task(id=created.id, tags=[" y", "z  "]), ["tags"]
    )

    assert list(created.tags) == ["padded", "x"]
    assert list(updated.tags) == ["y", "z"]
    assert list((await get_task(tasks, created.id)).tags) == ["y", "z"]


# --- tasks: update_time --------------------------------------------------------------------


async def test_update_time_advances_on_every_successful_update(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    times = [nanos(created, "update_time")]

    for index in range(3):
        updated = await update_task(
            tasks, resources_pb2.Task(id=created.id, description=f"v{index}"), ["description"]
        )
        times.append(nanos(updated, "update_time"))
        assert updated.create_time == created.create_time

    assert times == sorted(set(times)), "each update must move update_time forward"


async def test_update_time_stays_when_an_update_fails(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    created = await create_task(tasks, project.id)
    stale = created.etag
    await update_task(tasks, resources_pb2.Task(id=created.id, title="moved on"), ["title"])
    current = await get_task(tasks, created.id)

    await expect_failure(  # a bad value
        update_task_call(tasks, resources_pb2.Task(id=created.id, title=" "), ["title"]), INVALID
    )
    await expect_failure(  # a missing reference
        update_task_call(tasks, resources_pb2.Task(id=created.id, assignee_id=10**12)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await expect_failure(  # a stale etag
        update_task_call(tasks, resources_pb2.Task(id=created.id, title="x", etag=stale)),
        grpc.StatusCode.ABORTED,
    )

    assert await get_task(tasks, created.id) == current


# --- projects ------------------------------------------------------------------------------


async def test_project_mask_changes_only_the_masked_field(projects: Projects) -> None:
    created = await new_project(projects, description="before")
    new_name = unique("renamed")

    renamed = await update_project_call(
        projects, resources_pb2.Project(id=created.id, name=new_name, description="no"), ["name"]
    )
    described = await update_project_call(
        projects,
        resources_pb2.Project(id=created.id, name="no", description="after"),
        ["description"],
    )

    assert (renamed.name, renamed.description) == (new_name, "before")
    assert (described.name, described.description) == (new_name, "after")
    assert described.create_time == created.create_time
    assert await get_project(projects, created.id) == described


async def test_project_star_replaces_every_mutable_field(projects: Projects) -> None:
    created = await new_project(projects, description="cleared by *")
    new_name = unique("star")

    updated = await update_project_call(
        projects, resources_pb2.Project(id=created.id, name=new_name), ["*"]
    )

    assert (updated.name, updated.description) == (new_name, "")


async def test_project_without_a_mask_updates_the_fields_set(projects: Projects) -> None:
    created = await new_project(projects, description="kept")
    new_name = unique("unmasked")

    updated = await update_project_call(
        projects, resources_pb2.Project(id=created.id, name=new_name)
    )

    assert (updated.name, updated.description) == (new_name, "kept")


@pytest.mark.parametrize("path", ["nope", "name[0]", "name.first"])
async def test_an_unknown_project_path_is_invalid_and_named(projects: Projects, path: str) -> None:
    created = await new_project(projects)

    failure = await expect_failure(
        update_project_call(projects, resources_pb2.Project(id=created.id, name="x"), [path]),
        INVALID,
    )

    assert failure.fields == ["update_mask"]
    assert failure.bad_request is not None
    assert path in failure.bad_request.field_violations[0].description
    assert await get_project(projects, created.id) == created


async def test_output_only_project_paths_are_ignored_and_change_nothing(
    projects: Projects,
) -> None:
    created = await new_project(projects)

    returned = await update_project_call(
        projects,
        resources_pb2.Project(id=created.id, name="ignored"),
        ["id", "create_time", "update_time", "etag"],
    )

    assert returned == created
    assert await get_project(projects, created.id) == created


async def test_project_update_time_moves_on_success_only(projects: Projects) -> None:
    created = await new_project(projects)

    await expect_failure(
        update_project_call(projects, resources_pb2.Project(id=created.id, name=" "), ["name"]),
        INVALID,
    )
    assert await get_project(projects, created.id) == created

    updated = await update_project_call(
        projects, resources_pb2.Project(id=created.id, description="d"), ["description"]
    )
    assert nanos(updated, "update_time") > nanos(created, "update_time")


# --- workers -------------------------------------------------------------------------------


async def test_worker_mask_changes_only_the_masked_field(workers: Workers) -> None:
    created = await new_worker(workers, name="Before")
    email = f"{unique('after')}@example.com"

    renamed = await update_worker_call(
        workers, resources_pb2.Worker(id=created.id, name="After", email=email), ["name"]
    )
    moved = await update_worker_call(
        workers, resources_pb2.Worker(id=created.id, name="Not applied", email=email), ["email"]
    )

    assert (renamed.name, renamed.email) == ("After", created.email)
    assert (moved.name, moved.email) == ("After", email)
    assert await get_worker(workers, created.id) == moved


async def test_worker_star_replaces_every_mutable_field(workers: Workers) -> None:
    created = await new_worker(workers, name="Before")
    email = f"{unique('star')}@example.com"

    updated = await update_worker_call(
        workers, resources_pb2.Worker(id=created.id, name="After", email=email), ["*"]
    )
    assert (updated.name, updated.email) == ("After", email)

    # `*` with a field left empty replaces it with empty, which a required field rejects.
    failure = await expect_failure(
        update_worker_call(workers, resources_pb2.Worker(id=created.id, name="Only"), ["*"]),
        INVALID,
    )
    assert failure.fields == ["worker.email"]
    assert await get_worker(workers, created.id) == updated


async def test_worker_without_a_mask_updates_the_fields_set(workers: Workers) -> None:
    created = await new_worker(workers, name="Before")

    updated = await update_worker_call(workers, resources_pb2.Worker(id=created.id, name="After"))

    assert (updated.name, updated.email) == ("After", created.email)


@pytest.mark.parametrize("path", ["nope", "email[0]", "name.first"])
async def test_an_unknown_worker_path_is_invalid_and_named(workers: Workers, path: str) -> None:
    created = await new_worker(workers)

    failure = await expect_failure(
        update_worker_call(workers, resources_pb2.Worker(id=created.id, name="x"), [path]),
        INVALID,
    )

    assert failure.fields == ["update_mask"]
    assert failure.bad_request is not None
    assert path in failure.bad_request.field_violations[0].description
    assert await get_worker(workers, created.id) == created


async def test_output_only_worker_paths_are_ignored_and_change_nothing(workers: Workers) -> None:
    created = await new_worker(workers)

    returned = await update_worker_call(
        workers,
        resources_pb2.Worker(id=created.id, name="ignored"),
        ["id", "create_time", "update_time", "etag"],
    )

    assert returned == created
    assert await get_worker(workers, created.id) == created


async def test_worker_update_time_moves_on_success_only(workers: Workers) -> None:
    created = await new_worker(workers)

    await expect_failure(
        update_worker_call(workers, resources_pb2.Worker(id=created.id, email="nope"), ["email"]),
        INVALID,
    )
    assert await get_worker(workers, created.id) == created

    updated = await update_worker_call(
        workers, resources_pb2.Worker(id=created.id, name="Renamed"), ["name"]
    )
    assert nanos(updated, "update_time") > nanos(created, "update_time")
