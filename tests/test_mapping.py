"""Unit tests of service/api/mapping: protobuf messages <-> entities, no server, no database."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from service.api.mapping.projects import (
    apply_project_update,
    project_from_message,
    project_to_message,
)
from service.api.mapping.tasks import (
    apply_task_update,
    basic_task_message,
    new_task_from_message,
    normalise_tags,
    task_filter_from,
    task_to_message,
)
from service.api.mapping.timestamps import from_timestamp, to_timestamp
from service.api.mapping.workers import (
    apply_worker_update,
    normalise_email,
    worker_from_message,
    worker_to_message,
)
from service.storage.etags import etag_of
from service.storage.filters import TaskFilter, TimeBounds
from service.storage.models import NewTask, Project, Task, TaskPriority, TaskStatus, Worker
from taskmanager.v1 import resources_pb2, task_service_pb2

CREATED = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
NOW = datetime(2024, 3, 1, 8, 30, 0, 654321, tzinfo=UTC)
LATER = datetime(2024, 3, 2, 9, 0, 0, 1, tzinfo=UTC)

OptionalId = Literal["assignee_id", "parent_task_id"]
ALL_STATUSES = [
    (TaskStatus.PENDING, resources_pb2.TASK_STATUS_PENDING),
    (TaskStatus.IN_PROGRESS, resources_pb2.TASK_STATUS_IN_PROGRESS),
    (TaskStatus.BLOCKED, resources_pb2.TASK_STATUS_BLOCKED),
    (TaskStatus.DONE, resources_pb2.TASK_STATUS_DONE),
    (TaskStatus.CANCELLED, resources_pb2.TASK_STATUS_CANCELLED),
]
ALL_PRIORITIES = [
    (TaskPriority.LOW, resources_pb2.TASK_PRIORITY_LOW),
    (TaskPriority.MEDIUM, resources_pb2.TASK_PRIORITY_MEDIUM),
    (TaskPriority.HIGH, resources_pb2.TASK_PRIORITY_HIGH),
    (TaskPriority.URGENT, resources_pb2.TASK_PRIORITY_URGENT),
]


def stored_task(**fields: Any) -> Task:
    """A task as a repository would hand it over: with id, timestamps and version."""
    values: dict[str, Any] = {
        "id": 7,
        "project_id": 3,
        "title": "Write the report",
        "description": "Quarterly numbers",
        "status": TaskStatus.IN_PROGRESS,
        "priority": TaskPriority.HIGH,
        "tags": ["finance", "q1"],
        "assignee_id": 11,
        "parent_task_id": 5,
        "create_time": CREATED,
        "update_time": NOW,
        "version": 4,
        "project": Project(id=3, name="Apollo", create_time=CREATED, update_time=NOW),
    }
    values.update(fields)
    return Task(**values)


def timestamp_of(value: datetime) -> Timestamp:
    stamp = Timestamp()
    to_timestamp(value, stamp)
    return stamp


def without_etag(message: Any) -> Any:
    """A copy of a Task, Project or Worker message with its etag cleared."""
    copy = type(message)()
    copy.CopyFrom(message)
    copy.ClearField("etag")
    return copy


# --- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        CREATED,
        datetime(2038, 1, 19, 3, 14, 8, 999999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
        datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ],
)
def test_timestamp_round_trip_is_exact_to_the_microsecond(value: datetime) -> None:
    back = from_timestamp(timestamp_of(value))

    assert back == value
    assert back.microsecond == value.microsecond
    assert back.utcoffset() == timedelta(0)


def test_to_timestamp_writes_seconds_and_nanos_since_the_epoch() -> None:
    stamp = timestamp_of(datetime(1970, 1, 2, 0, 0, 1, 250000, tzinfo=UTC))

    assert (stamp.seconds, stamp.nanos) == (86_401, 250_000_000)


def test_to_timestamp_normalises_instants_before_the_epoch_to_positive_nanos() -> None:
    stamp = timestamp_of(datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC))

    assert (stamp.seconds, stamp.nanos) == (-1, 500_000_000)


def test_to_timestamp_converts_other_timezones_to_the_same_instant() -> None:
    plus_two = datetime(2024, 3, 1, 10, 30, 0, 654321, tzinfo=timezone(timedelta(hours=2)))

    assert timestamp_of(plus_two) == timestamp_of(NOW)
    assert from_timestamp(timestamp_of(plus_two)) == NOW


def test_from_timestamp_returns_timezone_aware_utc() -> None:
    back = from_timestamp(Timestamp(seconds=1_709_281_800, nanos=654_321_000))

    assert back.tzinfo is not None
    assert back.utcoffset() == timedelta(0)
    assert back == NOW


def test_from_timestamp_drops_nanoseconds_below_a_microsecond() -> None:
    back = from_timestamp(Timestamp(seconds=0, nanos=1_999))

    assert back == datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)


# --- tasks: entity -> message ---------------------------------------------------------------


def test_task_to_message_copies_every_field() -> None:
    message = task_to_message(stored_task())

    assert message.id == 7
    assert message.project_id == 3
    assert message.title == "Write the report"
    assert message.description == "Quarterly numbers"
    assert message.status == resources_pb2.TASK_STATUS_IN_PROGRESS
    assert message.priority == resources_pb2.TASK_PRIORITY_HIGH
    assert list(message.tags) == ["finance", "q1"]
    assert message.HasField("assignee_id")
    assert message.assignee_id == 11
    assert message.HasField("parent_task_id")
    assert message.parent_task_id == 5
    assert from_timestamp(message.create_time) == CREATED
    assert from_timestamp(message.update_time) == NOW
    assert message.etag == '"4"'
    assert not message.HasField("delete_time")  # a live task


def test_task_to_message_etag_is_the_quoted_version_and_follows_it() -> None:
    task = stored_task()

    assert task_to_message(task).etag == etag_of(task) == '"4"'
    task.version = 5
    assert task_to_message(task).etag == etag_of(task) == '"5"'


def test_task_to_message_of_a_deleted_task_carries_delete_time() -> None:
    message = task_to_message(stored_task(delete_time=LATER, deleted_with_id=7))

    assert message.HasField("delete_time")
    assert from_timestamp(message.delete_time) == LATER
    assert from_timestamp(message.update_time) == NOW  # delete_time is its own field


def test_task_to_message_leaves_absent_optional_ids_unset() -> None:
    message = task_to_message(stored_task(assignee_id=None, parent_task_id=None, tags=[]))

    assert not message.HasField("assignee_id")
    assert not message.HasField("parent_task_id")
    assert list(message.tags) == []


@pytest.mark.parametrize(("status", "number"), ALL_STATUSES)
def test_task_to_message_maps_every_status(status: TaskStatus, number: int) -> None:
    assert task_to_message(stored_task(status=status)).status == number


@pytest.mark.parametrize(("priority", "number"), ALL_PRIORITIES)
def test_task_to_message_maps_every_priority(priority: TaskPriority, number: int) -> None:
    assert task_to_message(stored_task(priority=priority)).priority == number


def test_task_to_message_basic_view_has_no_assignee_and_no_subtasks() -> None:
    worker = Worker(
        id=11, name="Ada", email="ada@example.com", create_time=CREATED, update_time=NOW
    )
    child = stored_task(id=8, parent_task_id=7)
    task = stored_task(assignee=worker, subtasks=[child])

    for view in (resources_pb2.TASK_VIEW_BASIC, resources_pb2.TASK_VIEW_UNSPECIFIED):
        message = task_to_message(task, view)
        assert not message.HasField("assignee")
        assert list(message.subtasks) == []


def test_task_to_message_full_view_adds_assignee_and_basic_subtasks() -> None:
    worker = Worker(
        id=11, name="Ada", email="ada@example.com", create_time=CREATED, update_time=NOW
    )
    grandchild = stored_task(id=10, parent_task_id=8, assignee_id=None)
    first = stored_task(id=8, parent_task_id=7, title="first", subtasks=[grandchild])
    second = stored_task(id=9, parent_task_id=7, title="second", assignee=worker)
    task = stored_task(assignee=worker, subtasks=[first, second])

    message = task_to_message(task, resources_pb2.TASK_VIEW_FULL)

    assert message.assignee == worker_to_message(worker)
    assert [(s.id, s.title, s.parent_task_id) for s in message.subtasks] == [
        (8, "first", 7),
        (9, "second", 7),
    ]
    # Subtasks are in the BASIC view: no nested assignee or grandchildren.
    assert all(not s.HasField("assignee") for s in message.subtasks)
    assert all(len(s.subtasks) == 0 for s in message.subtasks)


def test_task_to_message_full_view_adds_project_and_creator() -> None:
    creator = Worker(id=12, name="Bo", email="bo@example.com", create_time=CREATED, update_time=NOW)
    task = stored_task(creator_id=12, creator=creator, assignee=None, subtasks=[])

    message = task_to_message(task, resources_pb2.TASK_VIEW_FULL)
    basic = task_to_message(task)

    assert message.project == project_to_message(task.project)
    assert message.creator == worker_to_message(creator)
    assert not basic.HasField("project")
    assert not basic.HasField("creator")
    assert basic.creator_id == 12


def test_task_to_message_full_view_leaves_out_deleted_subtasks() -> None:
    live = stored_task(id=8, parent_task_id=7, title="live")
    deleted = stored_task(id=9, parent_task_id=7, title="deleted", delete_time=LATER)
    task = stored_task(assignee=None, subtasks=[live, deleted])

    message = task_to_message(task, resources_pb2.TASK_VIEW_FULL)

    assert [s.id for s in message.subtasks] == [8]
    assert not message.subtasks[0].HasField("delete_time")


def test_task_to_message_full_view_of_unassigned_task_has_no_assignee() -> None:
    message = task_to_message(
        stored_task(assignee_id=None, assignee=None, subtasks=[]), resources_pb2.TASK_VIEW_FULL
    )

    assert not message.HasField("assignee")
    assert list(message.subtasks) == []


# --- tasks: message -> new task ---------------------------------------------------------------


def test_a_new_task_has_exactly_the_columns_of_a_stored_task() -> None:
    # CreateTask inserts every column from a NewTask: the two cannot drift apart.
    columns = set(Task.__table__.columns.keys())  # type: ignore[attr-defined]
    assert {field.name for field in dataclasses.fields(NewTask)} == columns


def test_new_task_from_message_copies_fields_and_stamps_both_times_with_now() -> None:
    message = resources_pb2.Task(
        project_id=3,
        title="  Write the report  ",
        description="  keep blanks  ",
        status=resources_pb2.TASK_STATUS_BLOCKED,
        priority=resources_pb2.TASK_PRIORITY_URGENT,
        tags=["b", " a\t"],
        assignee_id=11,
        parent_task_id=5,
    )

    task = new_task_from_message(message, NOW)

    assert task.id is None
    assert task.project_id == 3
    assert task.title == "Write the report"
    assert task.description == "  keep blanks  "
    assert task.status == TaskStatus.BLOCKED
    assert task.priority == TaskPriority.URGENT
    assert task.tags == ["b", "a"]  # stored trimmed
    assert task.assignee_id == 11
    assert task.parent_task_id == 5
    assert task.create_time == NOW
    assert task.update_time == NOW


def test_new_task_from_message_defaults_to_pending_and_medium() -> None:
    task = new_task_from_message(resources_pb2.Task(project_id=3, title="t"), NOW)

    assert task.status == TaskStatus.PENDING
    assert task.priority == TaskPriority.MEDIUM
    assert task.tags == []


def test_new_task_from_message_absent_optional_ids_become_none() -> None:
    task = new_task_from_message(resources_pb2.Task(project_id=3, title="t"), NOW)

    assert task.assignee_id is None
    assert task.parent_task_id is None


def test_new_task_from_message_ignores_output_only_fields() -> None:
    message = resources_pb2.Task(
        id=99,
        project_id=3,
        title="t",
        create_time=timestamp_of(CREATED),
        update_time=timestamp_of(LATER),
        assignee=resources_pb2.Worker(id=11, name="Ada", email="ada@example.com"),
        subtasks=[resources_pb2.Task(id=100, project_id=3, title="child")],
        etag='"42"',
        delete_time=timestamp_of(LATER),
    )

    task = new_task_from_message(message, NOW)

    assert task.id is None
    assert task.create_time == NOW
    assert task.update_time == NOW
    assert task.assignee_id is None
    assert task.version == 1  # a new task starts at version 1 whatever etag was sent
    assert task.delete_time is None
    assert task.deleted_with_id is None


def test_new_task_from_message_copies_tags_into_a_plain_list() -> None:
    message = resources_pb2.Task(project_id=3, title="t", tags=["x"])

    task = new_task_from_message(message, NOW)
    message.tags.append("y")

    assert type(task.tags) is list
    assert task.tags == ["x"]


@pytest.mark.parametrize("assignee_id", [11, None])
@pytest.mark.parametrize("parent_task_id", [5, None])
@pytest.mark.parametrize(("status", "status_number"), ALL_STATUSES)
@pytest.mark.parametrize(("priority", "priority_number"), ALL_PRIORITIES)
def test_task_message_new_task_message_round_trip_preserves_fields(
    assignee_id: int | None,
    parent_task_id: int | None,
    status: TaskStatus,
    status_number: resources_pb2.TaskStatus.ValueType,
    priority: TaskPriority,
    priority_number: resources_pb2.TaskPriority.ValueType,
) -> None:
    original = resources_pb2.Task(
        project_id=3,
        title="Round trip",
        description="all the way",
        status=status_number,
        priority=priority_number,
        tags=["one", "two", "three"],
        assignee_id=assignee_id,
        parent_task_id=parent_task_id,
    )

    entity = new_task_from_message(original, CREATED)
    entity.id = 42  # what the database assigns on insert
    back = basic_task_message(entity)

    expected = resources_pb2.Task()
    expected.CopyFrom(original)
    expected.id = 42
    to_timestamp(CREATED, expected.create_time)
    to_timestamp(CREATED, expected.update_time)
    assert back.etag == etag_of(entity) == '"1"'
    assert without_etag(back) == expected
    assert not back.HasField("delete_time")
    assert back.HasField("assignee_id") == (assignee_id is not None)
    assert back.HasField("parent_task_id") == (parent_task_id is not None)


@pytest.mark.parametrize("delete_time", [LATER, None])
def test_task_entity_message_round_trip_preserves_delete_time(
    delete_time: datetime | None,
) -> None:
    original = stored_task(delete_time=delete_time, deleted_with_id=7 if delete_time else None)

    message = task_to_message(original)

    assert message.HasField("delete_time") == (delete_time is not None)
    if delete_time is not None:
        assert from_timestamp(message.delete_time) == delete_time
    # delete_time is output only: a create from the message makes a live task.
    assert new_task_from_message(message, NOW).delete_time is None


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (["one", "two"], ["one", "two"]),
        ([" one", "two ", "\tthree\n"], ["one", "two", "three"]),
        (["  Mixed Case  ", "in  between"], ["Mixed Case", "in  between"]),
        ([], []),
    ],
)
def test_task_message_new_task_message_round_trip_stores_tags_trimmed(
    given: list[str], stored: list[str]
) -> None:
    assert normalise_tags(given) == stored

    entity = new_task_from_message(resources_pb2.Task(project_id=3, title="t", tags=given), CREATED)
    back = basic_task_message(entity)

    assert entity.tags == stored
    assert list(back.tags) == stored
    assert new_task_from_message(back, CREATED).tags == stored  # trimming is idempotent


def test_normalise_tags_keeps_order_case_and_inner_blanks_and_returns_a_new_list() -> None:
    given = ["b ", " A", "c  d"]

    normalised = normalise_tags(given)

    assert normalised == ["b", "A", "c  d"]
    assert type(normalised) is list
    assert normalised is not given
    assert given == ["b ", " A", "c  d"]


@pytest.mark.parametrize("optional_ids", [{"assignee_id": 11, "parent_task_id": 5}, {}])
def test_task_entity_message_entity_round_trip_preserves_fields(
    optional_ids: dict[str, int],
) -> None:
    defaults = {"assignee_id": None, "parent_task_id": None}
    original = stored_task(**{**defaults, **optional_ids})

    back = new_task_from_message(task_to_message(original), original.create_time)

    assert back.project_id == original.project_id
    assert back.title == original.title
    assert back.description == original.description
    assert back.status == original.status
    assert back.priority == original.priority
    assert back.tags == original.tags
    assert back.assignee_id == original.assignee_id
    assert back.parent_task_id == original.parent_task_id
    assert from_timestamp(task_to_message(original).update_time) == original.update_time
    assert task_to_message(original).etag == etag_of(original)


# --- tasks: apply_task_update ---------------------------------------------------------------


def full_update_message() -> resources_pb2.Task:
    """A request task that differs from stored_task() in every mutable field."""
    return resources_pb2.Task(
        id=7,
        project_id=3,
        title="  New title ",
        description="new description",
        status=resources_pb2.TASK_STATUS_DONE,
        priority=resources_pb2.TASK_PRIORITY_LOW,
        tags=["new"],
        assignee_id=12,
        parent_task_id=6,
    )


def test_apply_task_update_changes_only_masked_fields() -> None:
    task = stored_task()

    apply_task_update(task, full_update_message(), frozenset({"title", "priority"}), LATER)

    assert task.title == "New title"
    assert task.priority == TaskPriority.LOW
    assert task.description == "Quarterly numbers"
    assert task.status == TaskStatus.IN_PROGRESS
    assert task.tags == ["finance", "q1"]
    assert task.assignee_id == 11
    assert task.parent_task_id == 5
    assert task.project_id == 3


def test_apply_task_update_with_every_mutable_field_copies_them_all() -> None:
    task = stored_task()
    fields = frozenset(
        {"title", "description", "status", "priority", "tags", "assignee_id", "parent_task_id"}
    )

    apply_task_update(task, full_update_message(), fields, LATER)

    assert task.title == "New title"
    assert task.description == "new description"
    assert task.status == TaskStatus.DONE
    assert task.priority == TaskPriority.LOW
    assert task.tags == ["new"]
    assert task.assignee_id == 12
    assert task.parent_task_id == 6


def test_apply_task_update_sets_update_time_and_keeps_create_time() -> None:
    task = stored_task()

    apply_task_update(task, full_update_message(), frozenset({"description"}), LATER)

    assert task.update_time == LATER
    assert task.create_time == CREATED


def test_apply_task_update_with_empty_field_set_only_touches_update_time() -> None:
    task = stored_task()
    before = task_to_message(task)

    apply_task_update(task, full_update_message(), frozenset(), LATER)

    after = task_to_message(task)
    assert from_timestamp(after.update_time) == LATER
    after.update_time.CopyFrom(before.update_time)
    assert after == before


@pytest.mark.parametrize("name", ["assignee_id", "parent_task_id"])
def test_apply_task_update_clears_optional_id_masked_but_unset(name: OptionalId) -> None:
    task = stored_task()
    message = full_update_message()
    message.ClearField(name)

    apply_task_update(task, message, frozenset({name}), LATER)

    assert getattr(task, name) is None


@pytest.mark.parametrize("name", ["assignee_id", "parent_task_id"])
def test_apply_task_update_keeps_optional_id_unset_but_not_masked(name: OptionalId) -> None:
    task = stored_task()
    message = full_update_message()
    message.ClearField(name)

    apply_task_update(task, message, frozenset({"title"}), LATER)

    assert getattr(task, name) == {"assignee_id": 11, "parent_task_id": 5}[name]


def test_apply_task_update_replaces_tags_with_a_new_list() -> None:
    task = stored_task()
    old_tags = task.tags

    apply_task_update(task, resources_pb2.Task(tags=["x", "y"]), frozenset({"tags"}), LATER)

    assert task.tags == ["x", "y"]
    assert task.tags is not old_tags  # reassignment is what SQLAlchemy detects
    assert type(task.tags) is list
    assert old_tags == ["finance", "q1"]


def test_apply_task_update_stores_tags_trimmed() -> None:
    task = stored_task()

    apply_task_update(task, resources_pb2.Task(tags=[" x", "y\t"]), frozenset({"tags"}), LATER)

    assert task.tags == ["x", "y"]


def test_apply_task_update_leaves_version_and_delete_time_alone() -> None:
    # The version is bumped by the database write (the ORM's version counter), and
    # delete_time only by DeleteTask/UndeleteTask, never by an update mask.
    task = stored_task()
    message = full_update_message()
    message.etag = '"99"'
    message.delete_time.CopyFrom(timestamp_of(LATER))

    apply_task_update(task, message, frozenset({"title", "tags"}), LATER)

    assert task.version == 4
    assert task.delete_time is None


def test_apply_task_update_masked_empty_tags_clear_them() -> None:
    task = stored_task()

    apply_task_update(task, resources_pb2.Task(), frozenset({"tags"}), LATER)

    assert task.tags == []


@pytest.mark.parametrize(("status", "number"), ALL_STATUSES)
def test_apply_task_update_maps_every_status(
    status: TaskStatus, number: resources_pb2.TaskStatus.ValueType
) -> None:
    other = TaskStatus.DONE if status == TaskStatus.PENDING else TaskStatus.PENDING
    task = stored_task(status=other)

    apply_task_update(task, resources_pb2.Task(status=number), frozenset({"status"}), LATER)

    assert task.status == status


@pytest.mark.parametrize(("priority", "number"), ALL_PRIORITIES)
def test_apply_task_update_maps_every_priority(
    priority: TaskPriority, number: resources_pb2.TaskPriority.ValueType
) -> None:
    other = TaskPriority.LOW if priority == TaskPriority.URGENT else TaskPriority.URGENT
    task = stored_task(priority=other)

    apply_task_update(task, resources_pb2.Task(priority=number), frozenset({"priority"}), LATER)

    assert task.priority == priority


# --- tasks: list/stream filters -------------------------------------------------------------


@pytest.mark.parametrize(
    "request_type", [task_service_pb2.ListTasksRequest, task_service_pb2.StreamTasksRequest]
)
def test_task_filter_from_empty_request_filters_nothing(request_type: type) -> None:
    assert task_filter_from(request_type(), NOW) == TaskFilter()


@pytest.mark.parametrize(
    "request_type", [task_service_pb2.ListTasksRequest, task_service_pb2.StreamTasksRequest]
)
def test_task_filter_from_copies_every_filter(request_type: type) -> None:
    request = request_type(
        project_id=3,
        statuses=[resources_pb2.TASK_STATUS_DONE, resources_pb2.TASK_STATUS_BLOCKED],
        priorities=[resources_pb2.TASK_PRIORITY_URGENT],
        assignee_id=11,
        parent_task_id=5,
        tags=["a", "b"],
        title_contains="report",
        create_time=resources_pb2.TimeRange(
            start_time=timestamp_of(CREATED), end_time=timestamp_of(NOW)
        ),
        update_time=resources_pb2.TimeRange(end_time=timestamp_of(LATER)),
    )

    assert task_filter_from(request, NOW) == TaskFilter(
        project_id=3,
        statuses=(TaskStatus.DONE, TaskStatus.BLOCKED),
        priorities=(TaskPriority.URGENT,),
        assignee_id=11,
        parent_task_id=5,
        tags=("a", "b"),
        title_contains="report",
        create_time=TimeBounds(start=CREATED, end=NOW),
        update_time=TimeBounds(start=None, end=LATER),
    )


@pytest.mark.parametrize(
    "request_type", [task_service_pb2.ListTasksRequest, task_service_pb2.StreamTasksRequest]
)
def test_task_filter_from_hides_deleted_tasks_unless_show_deleted(request_type: type) -> None:
    assert task_filter_from(request_type(), NOW).show_deleted is False
    assert task_filter_from(request_type(show_deleted=True), NOW).show_deleted is True


def test_task_filter_from_trims_tags_like_stored_tags() -> None:
    request = task_service_pb2.ListTasksRequest(tags=[" a", "b "])

    assert task_filter_from(request, NOW).tags == ("a", "b")


def test_task_filter_from_reads_unassigned_and_top_level_only() -> None:
    request = task_service_pb2.ListTasksRequest(unassigned=True, top_level_only=True)

    task_filter = task_filter_from(request, NOW)

    assert task_filter.unassigned is True
    assert task_filter.top_level_only is True
    assert task_filter.assignee_id is None
    assert task_filter.parent_task_id is None


def test_task_filter_from_empty_time_range_is_unbounded() -> None:
    request = task_service_pb2.ListTasksRequest(create_time=resources_pb2.TimeRange())

    assert task_filter_from(request, NOW).create_time == TimeBounds()


# --- projects -------------------------------------------------------------------------------


def test_project_to_message_copies_every_field() -> None:
    project = Project(
        id=3,
        name="Apollo",
        description="to the moon",
        create_time=CREATED,
        update_time=NOW,
        version=2,
    )

    message = project_to_message(project)

    assert (message.id, message.name, message.description) == (3, "Apollo", "to the moon")
    assert from_timestamp(message.create_time) == CREATED
    assert from_timestamp(message.update_time) == NOW
    assert message.etag == etag_of(project) == '"2"'


def test_project_from_message_strips_name_ignores_output_only_and_stamps_now() -> None:
    message = resources_pb2.Project(
        id=99,
        name="  Apollo  ",
        description=" as is ",
        create_time=timestamp_of(CREATED),
        update_time=timestamp_of(LATER),
        etag='"42"',
    )

    project = project_from_message(message, NOW)

    assert project.id is None
    assert project.name == "Apollo"
    assert project.description == " as is "
    assert project.create_time == NOW
    assert project.update_time == NOW
    assert project.version == 1


def test_project_message_entity_message_round_trip_preserves_fields() -> None:
    original = resources_pb2.Project(name="Apollo", description="to the moon")

    entity = project_from_message(original, CREATED)
    entity.id = 3
    back = project_to_message(entity)

    expected = resources_pb2.Project(id=3, name="Apollo", description="to the moon")
    to_timestamp(CREATED, expected.create_time)
    to_timestamp(CREATED, expected.update_time)
    assert back.etag == etag_of(entity) == '"1"'
    assert without_etag(back) == expected


def test_apply_project_update_changes_only_masked_fields() -> None:
    project = Project(id=3, name="Apollo", description="old", create_time=CREATED, update_time=NOW)
    message = resources_pb2.Project(name=" Gemini ", description="new")

    apply_project_update(project, message, frozenset({"name"}), LATER)

    assert project.name == "Gemini"
    assert project.description == "old"
    assert project.create_time == CREATED
    assert project.update_time == LATER


def test_apply_project_update_can_clear_description() -> None:
    project = Project(id=3, name="Apollo", description="old", create_time=CREATED, update_time=NOW)

    apply_project_update(project, resources_pb2.Project(), frozenset({"description"}), LATER)

    assert project.description == ""
    assert project.name == "Apollo"


# --- workers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("ada@example.com", "ada@example.com"),
        ("Ada@Example.COM", "ada@example.com"),
        ("  ada@example.com\t\n", "ada@example.com"),
        ("  ADA.Lovelace@EXAMPLE.org ", "ada.lovelace@example.org"),
    ],
)
def test_normalise_email_lowercases_and_strips(raw: str, normalised: str) -> None:
    assert normalise_email(raw) == normalised


def test_worker_to_message_copies_every_field() -> None:
    worker = Worker(
        id=11,
        name="Ada",
        email="ada@example.com",
        create_time=CREATED,
        update_time=NOW,
        version=3,
    )

    message = worker_to_message(worker)

    assert (message.id, message.name, message.email) == (11, "Ada", "ada@example.com")
    assert from_timestamp(message.create_time) == CREATED
    assert from_timestamp(message.update_time) == NOW
    assert message.etag == etag_of(worker) == '"3"'


def test_worker_from_message_normalises_ignores_output_only_and_stamps_now() -> None:
    message = resources_pb2.Worker(
        id=99,
        name="  Ada Lovelace ",
        email=" Ada@Example.COM ",
        create_time=timestamp_of(CREATED),
        update_time=timestamp_of(LATER),
        etag='"42"',
    )

    worker = worker_from_message(message, NOW)

    assert worker.id is None
    assert worker.name == "Ada Lovelace"
    assert worker.email == "ada@example.com"
    assert worker.create_time == NOW
    assert worker.update_time == NOW
    assert worker.version == 1


def test_worker_message_entity_message_round_trip_preserves_fields() -> None:
    original = resources_pb2.Worker(name="Ada", email="ada@example.com")

    entity = worker_from_message(original, CREATED)
    entity.id = 11
    back = worker_to_message(entity)

    expected = resources_pb2.Worker(id=11, name="Ada", email="ada@example.com")
    to_timestamp(CREATED, expected.create_time)
    to_timestamp(CREATED, expected.update_time)
    assert back.etag == etag_of(entity) == '"1"'
    assert without_etag(back) == expected


def test_apply_worker_update_changes_only_masked_fields() -> None:
    worker = Worker(
        id=11, name="Ada", email="ada@example.com", create_time=CREATED, update_time=NOW
    )
    message = resources_pb2.Worker(name="Grace", email=" Grace@Example.COM ")

    apply_worker_update(worker, message, frozenset({"email"}), LATER)

    assert worker.email == "grace@example.com"
    assert worker.name == "Ada"
    assert worker.create_time == CREATED
    assert worker.update_time == LATER


def test_apply_worker_update_strips_name() -> None:
    worker = Worker(
        id=11, name="Ada", email="ada@example.com", create_time=CREATED, update_time=NOW
    )

    apply_worker_update(worker, resources_pb2.Worker(name="  Grace "), frozenset({"name"}), LATER)

    assert worker.name == "Grace"
    assert worker.email == "ada@example.com"


def test_task_filter_from_reads_creator_due_time_and_overdue() -> None:
    request = task_service_pb2.ListTasksRequest(creator_id=4, overdue=True)
    to_timestamp(CREATED, request.due_time.start_time)

    task_filter = task_filter_from(request, NOW)

    assert task_filter.creator_id == 4
    assert task_filter.due_time == TimeBounds(start=CREATED)
    assert task_filter.overdue_at == NOW
    assert task_filter_from(task_service_pb2.ListTasksRequest(), NOW).overdue_at is None


def test_due_time_round_trips_and_an_update_without_it_clears_it() -> None:
    message = resources_pb2.Task(project_id=1, title="t")
    to_timestamp(LATER, message.due_time)

    task = new_task_from_message(message, NOW)
    assert task.due_time == LATER
    assert from_timestamp(basic_task_message(task).due_time) == LATER

    stored = Task(**dataclasses.asdict(task))
    apply_task_update(stored, resources_pb2.Task(), {"due_time"}, NOW)
    assert stored.due_time is None
    assert not basic_task_message(stored).HasField("due_time")
