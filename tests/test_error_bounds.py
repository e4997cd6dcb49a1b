"""Every error well-formed whatever the input: bounded in size, never INTERNAL for input.

The size budget is a property of the one translator (service.api.errors), checked here
on random errors of any size; the rest are the inputs that used to fail, through the
real server on both backends (test_fuzz_rpcs finds such inputs generically).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import exc as sa_exc

from service.api.errors import (
    DOMAIN,
    KEY_BYTES,
    MAX_METADATA,
    MAX_VIOLATIONS,
    MESSAGE_BYTES,
    STATUS_BYTES,
    TEXT_BYTES,
    bounded_status,
    clip,
)
from service.api.pagination import PageTokens, fingerprint
from service.api.servicers.tasks import LIST_TASKS
from service.runtime.server import SERVICE_NAMES
from service.settings import Settings
from service.storage import errors as domain
from service.storage.keyset import Ordering, Position
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from tests.conftest import create_task
from tests.descriptor_fuzzing import TRAILER_BUDGET, trailer_bytes
from tests.rpc_errors import RpcFailure, read_failure

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TaskStub = task_service_pb2_grpc.TaskServiceStub

# --- the budget, on errors of any size -------------------------------------------------

HUGE = st.sampled_from(["x" * 20_000, "é" * 9_000, "🙂" * 3_000, "\x00" * 5_000])
TEXT = st.one_of(st.text(max_size=40), HUGE)
VIOLATIONS = st.lists(
    st.builds(domain.FieldViolation, TEXT, TEXT, st.text(min_size=1, max_size=20)), max_size=300
)
OTHER_ERRORS = (
    domain.NotFound,
    domain.AlreadyExists,
    domain.FailedPrecondition,
    domain.Aborted,
    domain.Unavailable,
    domain.DeadlineExceeded,
    domain.Unauthenticated,
    domain.PermissionDenied,
)


def _other(kind: type[domain.ServiceError], reason: str, message: str, **metadata: str) -> Any:
    return kind(reason, message, **metadata)


SERVICE_ERRORS = st.one_of(
    st.builds(
        domain.InvalidArgument,
        VIOLATIONS,
        st.text(min_size=1, max_size=30),
        st.one_of(st.none(), TEXT),
    ),
    st.builds(
        lambda kind, reason, message, metadata: _other(kind, reason, message, **metadata),
        st.sampled_from(OTHER_ERRORS),
        st.one_of(st.text(min_size=1, max_size=30), HUGE),
        TEXT,
        st.dictionaries(st.from_regex(r"[a-z_]{1,80}", fullmatch=True), TEXT, max_size=40),
    ),
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(error=SERVICE_ERRORS)
def test_every_status_fits_the_budget_and_says_what_was_cut(error: domain.ServiceError) -> None:
    status = bounded_status(error)
    assert status.ByteSize() <= STATUS_BYTES
    assert status.code == code_pb2.Code.Value(error.code)
    assert len(status.message.encode()) <= MESSAGE_BYTES
    rpc_status.to_status(status)  # a status grpc can send
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == DOMAIN
    assert info.reason
    assert len(info.reason.encode()) <= KEY_BYTES
    assert len(info.metadata) <= MAX_METADATA
    for key, value in info.metadata.items():
        assert len(key.encode()) <= KEY_BYTES
        assert len(value.encode()) <= TEXT_BYTES
    if not isinstance(error, domain.InvalidArgument):
        assert len(status.details) == 1
        return
    bad_request = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad_request)
    listed = list(bad_request.field_violations)
    for violation in listed:
        assert len(violation.field.encode()) <= TEXT_BYTES
        assert len(violation.description.encode()) <= TEXT_BYTES
    if len(listed) < len(error.violations) or listed and listed[-1].reason == "TRUNCATED":
        marker = listed.pop()
        assert marker.reason == "TRUNCATED"
        assert (
            marker.description
            == f"{len(error.violations) - len(listed)} more violations not listed"
        )
    assert len(listed) <= MAX_VIOLATIONS
    assert [v.reason for v in listed] == [v.reason for v in error.violations[: len(listed)]]


def test_an_error_within_the_budget_is_sent_as_it_is() -> None:
    violations = [
        domain.FieldViolation(f"task.tags[{index}]", "duplicate tag", "DUPLICATE_TAG")
        for index in range(12)
    ]
    error = domain.InvalidArgument(violations)
    status = bounded_status(error)
    bad_request = error_details_pb2.BadRequest()
    status.details[1].Unpack(bad_request)
    assert [(v.field, v.description, v.reason) for v in bad_request.field_violations] == [
        (v.field, v.description, v.reason) for v in violations
    ]
    assert status.message == error.message


@given(text=st.text(), limit=st.integers(32, 2000))
def test_clip_keeps_a_marked_prefix_within_the_limit(text: str, limit: int) -> None:
    clipped = clip(text, limit)
    if len(text.encode()) <= limit:
        assert clipped == text
    else:
        assert len(clipped.encode()) <= limit
        kept, marker = clipped.rsplit("…[", 1)
        assert text.startswith(kept)
        assert marker == f"{len(text)} chars]"


# --- hostile sizes through the server --------------------------------------------------


async def fails_within_budget(call: Awaitable[Any], code: grpc.StatusCode) -> RpcFailure:
    """Await `call`: it must fail with `code`, ErrorInfo and trailers within the budget."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    size = trailer_bytes(raised.value.details() or "", raised.value.trailing_metadata() or ())
    assert size <= TRAILER_BUDGET, f"{size} bytes of trailers"
    return read_failure(raised.value, code)


async def test_an_order_by_of_20000_characters_is_invalid_and_keeps_its_hint(
    tasks: TaskStub,
) -> None:
    request = task_service_pb2.ListTasksRequest(order_by="x" * 20_000)
    failure = await fails_within_budget(tasks.ListTasks(request), INVALID)
    assert failure.bad_request is not None
    (violation,) = failure.bad_request.field_violations
    assert violation.field == "order_by"
    assert "(20000 characters)" in violation.description
    assert "accepted fields: create_time" in violation.description


UPDATES = {
    "UpdateTask": lambda stubs: stubs[0].UpdateTask(
        task_service_pb2.UpdateTaskRequest(
            task=resources_pb2.Task(id=1), update_mask=FieldMask(paths=["é" * 20_000])
        )
    ),
    "UpdateProject": lambda stubs: stubs[1].UpdateProject(
        project_service_pb2.UpdateProjectRequest(
            project=resources_pb2.Project(id=1), update_mask=FieldMask(paths=["x" * 20_000])
        )
    ),
    "UpdateWorker": lambda stubs: stubs[2].UpdateWorker(
        worker_service_pb2.UpdateWorkerRequest(
            worker=resources_pb2.Worker(id=1),
            update_mask=FieldMask(paths=[f"p{index}" * 500 for index in range(40)]),
        )
    ),
}


@pytest.mark.parametrize("rpc", UPDATES)
async def test_a_huge_update_mask_is_invalid_argument_within_the_budget(
    rpc: str,
    tasks: TaskStub,
    projects: project_service_pb2_grpc.ProjectServiceStub,
    workers: worker_service_pb2_grpc.WorkerServiceStub,
) -> None:
    failure = await fails_within_budget(UPDATES[rpc]((tasks, projects, workers)), INVALID)
    assert set(failure.fields) <= {"update_mask", ""}


async def test_2000_violations_list_the_first_and_count_the_rest(tasks: TaskStub) -> None:
    batch = task_service_pb2.BatchCreateTasksRequest(
        requests=[task_service_pb2.CreateTaskRequest()] * 1000
    )
    failure = await fails_within_budget(tasks.BatchCreateTasks(batch), INVALID)
    assert failure.bad_request is not None
    *listed, marker = failure.bad_request.field_violations
    assert 10 <= len(listed) <= MAX_VIOLATIONS
    assert [v.field for v in listed[:2]] == [
        "requests[0].task.project_id",
        "requests[0].task.title",
    ]
    assert (marker.reason, marker.description) == (
        "TRUNCATED",
        f"{2000 - len(listed)} more violations not listed",
    )


# --- Timestamps at both ends of their range --------------------------------------------

EARLIEST = Timestamp(seconds=-62_135_596_800)  # 0001-01-01T00:00:00Z
LATEST = Timestamp(seconds=253_402_300_799, nanos=999_999_999)  # 9999-12-31T23:59:59.999999999Z


@pytest.mark.parametrize(
    ("bound", "value", "finds_all"),
    [
        ("start_time", EARLIEST, True),
        ("end_time", EARLIEST, False),
        ("start_time", LATEST, False),
        ("end_time", LATEST, True),
    ],
    ids=["from 0001", "until 0001", "from 9999", "until 9999"],
)
@pytest.mark.parametrize("rpc", ["ListTasks", "StreamTasks"])
@pytest.mark.parametrize("field", ["create_time", "update_time"])
async def test_a_time_bound_at_either_end_of_the_timestamp_range(
    tasks: TaskStub,
    project: resources_pb2.Project,
    rpc: str,
    field: str,
    bound: str,
    value: Timestamp,
    finds_all: bool,
) -> None:
    created = {(await create_task(tasks, project.id)).id for _ in range(2)}
    time_range = resources_pb2.TimeRange(**{bound: value})
    if rpc == "ListTasks":
        request = task_service_pb2.ListTasksRequest(project_id=project.id, **{field: time_range})
        found = {task.id for task in (await tasks.ListTasks(request)).tasks}
    else:
        stream = task_service_pb2.StreamTasksRequest(project_id=project.id, **{field: time_range})
        found = {task.id async for batch in tasks.StreamTasks(stream) for task in batch.tasks}
    assert found == (created if finds_all else set())


# --- health ----------------------------------------------------------------------------


async def test_health_list_reports_every_service(
    health: health_pb2_grpc.HealthStub,
) -> None:
    response = await health.List(health_pb2.HealthListRequest())
    assert set(response.statuses) == {"", *SERVICE_NAMES}
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {status.status for status in response.statuses.values()} == {serving}


async def test_health_check_of_an_unknown_service_is_not_found_with_error_info(
    health: health_pb2_grpc.HealthStub,
) -> None:
    unknown = health_pb2.HealthCheckRequest(service="x" * 20_000)
    failure = await fails_within_budget(health.Check(unknown), grpc.StatusCode.NOT_FOUND)
    assert failure.info.reason == "SERVICE_NOT_FOUND"


# --- requests that are not what they claim ---------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff", b"\x08", b"\x72\x03\xff\xfe\xfd"],  # garbage; truncated; order_by not UTF-8
    ids=["garbage", "truncated", "invalid UTF-8"],
)
async def test_a_request_that_does_not_parse_is_invalid_argument(
    channel: grpc.aio.Channel, body: bytes
) -> None:
    list_tasks = channel.unary_unary(
        "/taskmanager.v1.TaskService/ListTasks",
        request_serializer=lambda data: data,
        response_deserializer=task_service_pb2.ListTasksResponse.FromString,
    )
    failure = await fails_within_budget(list_tasks(body), INVALID)
    assert failure.info.reason == "MALFORMED_REQUEST"
    assert "taskmanager.v1.ListTasksRequest" in failure.message


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("order_by", "position"),
    [
        ("priority", Position(2**40, 1)),  # priority is a 32-bit INTEGER
        ("priority", Position(1, 2**63)),  # ids are BIGINT
        ("title", Position("a\x00b", 1)),  # PostgreSQL text holds no NUL
        ("title", Position(7, 1)),
        ("create_time", Position(EPOCH + timedelta(days=1), -(2**70))),
    ],
)
async def test_a_forged_page_token_is_invalid_argument(
    tasks: TaskStub, order_by: str, position: Position
) -> None:
    """A token made with the server's own key (the development key in these tests, which
    a deployment must replace) still cannot carry a key the column cannot hold."""
    request = task_service_pb2.ListTasksRequest(order_by=order_by)
    tokens = PageTokens(Settings().page_token_secret.get_secret_value())
    ordering = Ordering(order_by, LIST_TASKS.order_fields[order_by], descending=False)
    query = fingerprint(request, "ListTasks", ("page_size", "page_token"))
    request.page_token = tokens.encode(query, ordering, position)
    failure = await fails_within_budget(tasks.ListTasks(request), INVALID)
    assert failure.info.reason == "INVALID_PAGE_TOKEN"


# --- inputs past what a database statement can take -------------------------------------


async def test_a_status_repeated_40000_times_filters_like_once(
    tasks: TaskStub, project: resources_pb2.Project
) -> None:
    """SQLite takes at most 32,766 bound parameters: repeated filter values count once."""
    done = await create_task(tasks, project.id, status=resources_pb2.TASK_STATUS_DONE)
    await create_task(tasks, project.id)
    request = task_service_pb2.ListTasksRequest(
        project_id=project.id,
        statuses=[resources_pb2.TASK_STATUS_DONE] * 40_000,
        priorities=[resources_pb2.TASK_PRIORITY_MEDIUM] * 40_000,
    )
    assert [task.id for task in (await tasks.ListTasks(request)).tasks] == [done.id]
    stream = task_service_pb2.StreamTasksRequest(
        project_id=project.id, statuses=[resources_pb2.TASK_STATUS_DONE] * 40_000
    )
    assert [t.id async for batch in tasks.StreamTasks(stream) for t in batch.tasks] == [done.id]


async def test_a_title_contains_longer_than_any_title_is_invalid(tasks: TaskStub) -> None:
    """SQLite refuses LIKE patterns above 50,000 bytes; no title exceeds 500 characters."""
    request = task_service_pb2.ListTasksRequest(title_contains="é" * 30_000)
    failure = await fails_within_budget(tasks.ListTasks(request), INVALID)
    assert failure.fields == ["title_contains"]
    assert failure.bad_request is not None
    assert failure.bad_request.field_violations[0].reason == "TOO_LONG"


def _sqlite_error(path: str, sql: str, *parameters: object) -> sa_exc.OperationalError:
    try:
        with closing(sqlite3.connect(path, timeout=0)) as connection:
            connection.execute(sql, parameters)
    except sqlite3.OperationalError as error:
        return sa_exc.OperationalError(sql, parameters, error)
    raise AssertionError(f"{sql} did not fail")


def test_a_statement_sqlite_refuses_is_no_outage(tmp_path: Path) -> None:
    """Only SQLite's busy/locked/I-O/open failures mean UNAVAILABLE (clients retry those);
    a statement it refuses (SQLITE_ERROR) is a bug to log, not an outage to retry."""
    refused = _sqlite_error(":memory:", "SELECT 'a' LIKE ?", "_" * 60_000)
    assert domain.to_service_error(refused).code == "INTERNAL"
    unopenable = _sqlite_error(str(tmp_path), "SELECT 1")  # a directory
    assert domain.to_service_error(unopenable).code == "UNAVAILABLE"
    database = str(tmp_path / "locked.db")
    with closing(sqlite3.connect(database, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        locked = _sqlite_error(database, "SELECT 1 FROM sqlite_master")
        assert domain.to_service_error(locked).code == "UNAVAILABLE"
