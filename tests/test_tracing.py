"""Tracing through a real OTLP/gRPC receiver: server spans, a span per SQL statement, logs.

The server here runs in the test process (both backends), so each call's statements
can be counted at the engine and compared with the spans that arrive. The separate
process, configured by OTEL_* variables alone, is in test_tracing_process.py.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from service.runtime.logs import JsonFormatter, TextFormatter
from taskmanager.v1 import (
    project_service_pb2,
    resources_pb2,
    task_service_pb2,
)
from tests.conftest import count_statements, unique
from tests.otlp_receiver import (
    CLIENT,
    SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    ReceivedSpan,
)
from tests.seeding import seed_tasks
from tests.trace_callers import MISSING_ID, Caller, assert_no_values
from tests.traced_server import Traced, traced_server


@pytest.fixture(scope="module")
async def traced(database_url: str) -> AsyncIterator[Traced]:
    """A server of this module's own, tracing on, exporting to a receiver every 20 ms."""
    async with traced_server(database_url) as running:
        yield running


async def _project(traced: Traced) -> resources_pb2.Project:
    request = project_service_pb2.CreateProjectRequest(name=unique("traced"))
    project: resources_pb2.Project = await traced.projects.CreateProject(request)
    return project


async def _code(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


# --- server spans -------------------------------------------------------------------


async def test_get_task_is_a_child_of_the_callers_span_with_one_statement(traced: Traced) -> None:
    project = await _project(traced)
    title = unique("secret-title")
    created = await traced.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=project.id, title=title, tags=["hush-tag"])
        )
    )
    caller, request_id = Caller.new(), str(uuid.uuid4())
    with count_statements(traced.server.engine) as statements:
        await traced.tasks.GetTask(
            task_service_pb2.GetTaskRequest(id=created.id),
            metadata=caller.metadata(**{"x-request-id": request_id, "x-actor": "billing"}),
        )
    span, children = await traced.call_spans(caller)
    assert span.trace_id == caller.trace_id
    assert span.name == "taskmanager.v1.TaskService/GetTask"
    assert span.span.kind == SERVER
    assert span.span.trace_state == "caller=1"
    assert span.span.status.code == STATUS_UNSET
    assert span.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "taskmanager.v1.TaskService",
        "rpc.method": "GetTask",
        "rpc.grpc.status_code": 0,
        "taskservice.request_id": request_id,
        "enduser.id": "billing",
    }
    assert statements.count == 1
    (select,) = children
    assert select.name == "SELECT tasks"
    assert select.span.kind == CLIENT
    assert select.attributes["db.operation.name"] == "SELECT"
    assert select.attributes["db.collection.name"] == "tasks"
    assert select.attributes["db.query.text"] == statements.statements[0]
    assert_no_values([span, *children], title, "hush-tag")


async def test_failed_calls_carry_their_status_and_only_their_statements(traced: Traced) -> None:
    missing, invalid = Caller.new(), Caller.new()
    with count_statements(traced.server.engine) as statements:
        request = task_service_pb2.GetTaskRequest(id=MISSING_ID)
        assert await _code(traced.tasks.GetTask(request, metadata=missing.metadata())) == (
            grpc.StatusCode.NOT_FOUND
        )
    assert statements.count == 1
    with count_statements(traced.server.engine) as statements:
        request = task_service_pb2.GetTaskRequest(id=-MISSING_ID)
        assert await _code(traced.tasks.GetTask(request, metadata=invalid.metadata())) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    assert statements.count == 0
    not_found, found_children = await traced.call_spans(missing)
    assert not_found.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert not_found.span.status.code == STATUS_UNSET  # the caller's mistake, not ours
    assert [s.name for s in found_children] == ["SELECT tasks"]
    bad, bad_children = await traced.call_spans(invalid)
    assert bad.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad_children == []
    assert_no_values([not_found, bad, *found_children], str(MISSING_ID))


async def test_each_statement_of_a_call_is_one_child_span(traced: Traced) -> None:
    project = await _project(traced)
    secret = unique("secret")
    calls: list[tuple[str, Callable[[Caller], Awaitable[Any]]]] = []

    async def create(caller: Caller) -> Any:
        task = resources_pb2.Task(project_id=project.id, title=secret, description=secret)
        request = task_service_pb2.CreateTaskRequest(task=task, request_id=str(uuid.uuid4()))
        return await traced.tasks.CreateTask(request, metadata=caller.metadata(), timeout=30)

    created = await create(Caller.new(sampled=False))
    calls.append(("CreateTask", create))
    full = task_service_pb2.GetTaskRequest(id=created.id, view=resources_pb2.TASK_VIEW_FULL)
    calls.append(("GetTask", lambda c: traced.tasks.GetTask(full, metadata=c.metadata())))
    listed = task_service_pb2.ListTasksRequest(project_id=project.id, title_contains=secret)
    calls.append(("ListTasks", lambda c: traced.tasks.ListTasks(listed, metadata=c.metadata())))
    update = task_service_pb2.UpdateTaskRequest(
        task=resources_pb2.Task(id=created.id, title=secret + "!"),
        update_mask=FieldMask(paths=["title"]),
    )
    calls.append(
        ("UpdateTask", lambda c: traced.tasks.UpdateTask(update, metadata=c.metadata(), timeout=30))
    )
    delete = task_service_pb2.DeleteTaskRequest(id=created.id)
    calls.append(("DeleteTask", lambda c: traced.tasks.DeleteTask(delete, metadata=c.metadata())))
    spans: list[ReceivedSpan] = []
    for method, call in calls:
        caller = Caller.new()
        with count_statements(traced.server.engine) as statements:
            await call(caller)
        span, children = await traced.call_spans(caller)
        assert span.name == f"taskmanager.v1.TaskService/{method}"
        assert len(children) == statements.count, (method, statements.statements)
        assert [c.attributes["db.query.text"] for c in children] == statements.statements
        assert all(c.span.kind == CLIENT and c.trace_id == caller.trace_id for c in children)
        spans += [span, *children]
    assert_no_values(spans, secret)


async def test_a_stream_records_one_event_per_batch(traced: Traced) -> None:
    project = await _project(traced)
    for index in range(5):
        task = resources_pb2.Task(project_id=project.id, title=f"streamed {index}")
        await traced.tasks.CreateTask(task_service_pb2.CreateTaskRequest(task=task))
    caller = Caller.new()
    request = task_service_pb2.StreamTasksRequest(project_id=project.id, batch_size=2)
    with count_statements(traced.server.engine) as statements:
        batches = [r async for r in traced.tasks.StreamTasks(request, metadata=caller.metadata())]
    assert [len(batch.tasks) for batch in batches] == [2, 2, 1]
    span, children = await traced.call_spans(caller)
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert [event.name for event in span.span.events] == ["rpc.message"] * 3
    assert len(children) == statements.count == 3  # a SELECT per batch, not a span per row
    assert {child.name for child in children} == {"SELECT tasks"}


async def test_a_database_error_is_recorded_without_its_message(
    traced: Traced, database_url: str
) -> None:
    name = unique("taken-name")
    await traced.projects.CreateProject(project_service_pb2.CreateProjectRequest(name=name))
    caller = Caller.new()
    again = project_service_pb2.CreateProjectRequest(name=name)
    call = traced.projects.CreateProject(again, metadata=caller.metadata())
    assert await _code(call) == grpc.StatusCode.ALREADY_EXISTS
    span, children = await traced.call_spans(caller)
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.ALREADY_EXISTS.value[0]
    failed = [child for child in children if child.span.status.code == STATUS_ERROR]
    assert [child.name for child in failed] == ["INSERT projects"]
    assert failed[0].attributes["error.type"] in ("UniqueViolationError", "IntegrityError")
    if database_url.startswith("postgresql"):
        assert failed[0].attributes["db.response.status_code"] == "23505"
    assert_no_values([span, *children], name)


async def test_an_unsampled_caller_gets_no_spans(traced: Traced) -> None:
    unsampled, sampled = Caller.new(sampled=False), Caller.new()
    request = task_service_pb2.GetTaskRequest(id=MISSING_ID)
    await _code(traced.tasks.GetTask(request, metadata=unsampled.metadata()))
    await _code(traced.tasks.GetTask(request, metadata=sampled.metadata()))
    await traced.call_spans(sampled)  # exported in order: the first call's would be here
    assert traced.receiver.of_trace(unsampled.trace_id) == []


async def test_a_call_without_traceparent_starts_its_own_trace(traced: Traced) -> None:
    request_id = str(uuid.uuid4())
    metadata = (("x-request-id", request_id),)
    await _code(traced.tasks.GetTask(task_service_pb2.GetTaskRequest(id=1), metadata=metadata))
    spans = await traced.receiver.wait_for(
        lambda spans: any(s.attributes.get("taskservice.request_id") == request_id for s in spans)
    )
    (root,) = [s for s in spans if s.attributes.get("taskservice.request_id") == request_id]
    assert root.parent_id == ""


async def test_a_cancelled_stream_ends_its_span_cancelled(traced: Traced) -> None:
    project = await _project(traced)
    for index in range(3):
        task = resources_pb2.Task(project_id=project.id, title=f"cancelled {index}")
        await traced.tasks.CreateTask(task_service_pb2.CreateTaskRequest(task=task))
    caller = Caller.new()
    request = task_service_pb2.StreamTasksRequest(project_id=project.id, batch_size=1)
    stream = traced.tasks.StreamTasks(request, metadata=caller.metadata())
    await stream.read()
    stream.cancel()
    span, _ = await traced.call_spans(caller)
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_statements_outside_a_call_get_no_span(traced: Traced) -> None:
    project = await _project(traced)
    await seed_tasks(traced.server, project.id, 3)  # through the server's own engine
    caller = Caller.new()
    await _code(
        traced.tasks.GetTask(
            task_service_pb2.GetTaskRequest(id=MISSING_ID), metadata=caller.metadata()
        )
    )
    spans = await traced.receiver.wait_for(
        lambda spans: any(s.parent_id == caller.span_id for s in spans)
    )
    assert [s.name for s in spans if s.span.kind == CLIENT and s.parent_id == ""] == []


# --- log lines ----------------------------------------------------------------------


@contextmanager
def _log_lines(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("service.runtime.observability")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_log_lines_of_a_traced_call_carry_its_ids(traced: Traced, log_format: str) -> None:
    caller = Caller.new()
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    with _log_lines(formatter) as lines:
        request = task_service_pb2.GetTaskRequest(id=MISSING_ID)
        await _code(traced.tasks.GetTask(request, metadata=caller.metadata()))
    span, _ = await traced.call_spans(caller)
    (line,) = lines.getvalue().splitlines()  # the failed call's "rpc finished" line
    if log_format == "json":
        entry = json.loads(line)
        assert (entry["trace_id"], entry["span_id"]) == (caller.trace_id, span.span_id)
    else:
        assert f" trace_id={caller.trace_id} span_id={span.span_id}" in line
