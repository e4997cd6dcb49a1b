"""Observability: Prometheus metrics on their own port, one log line per RPC, request ids."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.call_context import current_request_id
from service.runtime.logs import JsonFormatter, TextFormatter
from service.runtime.server import PortInUse, TaskServer, start_server
from service.settings import Settings
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.conftest import create_task, unique
from tests.metrics_scrape import Samples, scrape_port, value
from tests.rpc_errors import DETAILS_KEY
from tests.seeding import seed_tasks

TIMEOUT = 20.0  # bound on anything we wait for; never a fixed delay
TASK_SERVICE = "taskmanager.v1.TaskService"
HEALTH_SERVICE = "grpc.health.v1.Health"
RPC_LOGGER = "service.runtime.observability"
MISSING_ID = 10**12


# --- helpers ------------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def scrape(server: TaskServer) -> Samples:
    """Every sample /metrics serves now (urllib, on a thread: the loop keeps serving)."""
    return await scrape_port(server.metrics_port)


def rpc_labels(
    method: str, grpc_type: str = "unary", service: str = TASK_SERVICE
) -> dict[str, str]:
    return {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method}


async def wait_for_sample(
    server: TaskServer, condition: Callable[[Samples], bool], timeout: float = TIMEOUT
) -> Samples:
    """Scrape until `condition` holds (for RPCs that end after the client stops reading)."""
    async with asyncio.timeout(timeout):
        while True:
            samples = await scrape(server)
            if condition(samples):
                return samples


def trailer(metadata: Any, key: str) -> str | None:
    """The value of `key` in trailing metadata, or None."""
    return next((value for k, value in metadata or () if k == key), None)


@contextmanager
def captured_rpc_lines() -> Iterator[io.StringIO]:
    """The RPC log lines, formatted as JSON, while the block runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(RPC_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def json_lines_with(stream: io.StringIO, request_id: str) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [entry for entry in entries if entry.get("request_id") == request_id]


def rpc_fields(caplog: pytest.LogCaptureFixture, request_id: str) -> list[dict[str, Any]]:
    """The fields of the RPC log records that carry `request_id`."""
    return [
        record.fields  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == RPC_LOGGER and record.fields.get("request_id") == request_id  # type: ignore[attr-defined]
    ]


# --- a server with metrics on -------------------------------------------------------


@pytest.fixture(scope="module")
async def observed(database_url: str) -> AsyncIterator[TaskServer]:
    """A server of this module's own, serving /metrics on a free port, logging every RPC."""
    settings = Settings(
        database_url=database_url, address="127.0.0.1:0", metrics_port=free_port(), rpc_log="all"
    )
    running = await start_server(settings)
    yield running
    await running.stop(grace=1)


@pytest.fixture(scope="module")
async def observed_channel(observed: TaskServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{observed.port}") as channel:
        yield channel


@pytest.fixture
def observed_tasks(observed_channel: grpc.aio.Channel) -> task_service_pb2_grpc.TaskServiceStub:
    return task_service_pb2_grpc.TaskServiceStub(observed_channel)


@pytest.fixture
async def observed_project(observed_channel: grpc.aio.Channel) -> resources_pb2.Project:
    stub = project_service_pb2_grpc.ProjectServiceStub(observed_channel)
    request = project_service_pb2.CreateProjectRequest(
        project=resources_pb2.Project(name=unique("observed"))
    )
    created: resources_pb2.Project = await stub.CreateProject(request)
    return created


# --- metrics --------------------------------------------------------------------------


async def test_unary_rpcs_are_counted_per_method_and_code(
    observed: TaskServer, observed_tasks: Any, observed_project: resources_pb2.Project
) -> None:
    task = await create_task(observed_tasks, observed_project.id)
    before = await scrape(observed)
    await observed_tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id))
    with pytest.raises(grpc.aio.AioRpcError):
        await observed_tasks.GetTask(task_service_pb2.GetTaskRequest(id=MISSING_ID))
    after = await scrape(observed)  # unary RPCs are recorded before the response leaves

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    get_task = rpc_labels("GetTask")
    assert delta("grpc_server_started_total", **get_task) == 2
    assert delta("grpc_server_handled_total", **get_task, grpc_code="OK") == 1
    assert delta("grpc_server_handled_total", **get_task, grpc_code="NotFound") == 1
    assert delta("grpc_server_handling_seconds_count", **get_task, grpc_code="OK") == 1
    assert delta("grpc_server_handling_seconds_count", **get_task, grpc_code="NotFound") == 1
    assert delta("grpc_server_handling_seconds_bucket", **get_task, grpc_code="OK", le="+Inf") == 1
    assert delta("grpc_server_handling_seconds_sum", **get_task, grpc_code="OK") > 0
    # Unary RPCs send no stream messages; other methods are untouched.
    assert delta("grpc_server_msg_sent_total", **get_task) == 0
    assert delta("grpc_server_started_total", **rpc_labels("ListTasks")) == 0


async def test_created_series_are_not_exported(observed: TaskServer) -> None:
    samples = await scrape(observed)
    assert samples
    assert not [name for name, _ in samples if name.endswith("_created")]


async def test_server_stream_counts_messages_sent_until_it_ends(
    observed: TaskServer, observed_tasks: Any, observed_project: resources_pb2.Project
) -> None:
    await seed_tasks(observed, observed_project.id, 5)
    labels = rpc_labels("StreamTasks", "server_stream")
    before = await scrape(observed)
    request = task_service_pb2.StreamTasksRequest(project_id=observed_project.id, batch_size=2)
    responses = [response async for response in observed_tasks.StreamTasks(request)]
    assert len(responses) == 3
    after = await wait_for_sample(
        observed,
        lambda s: (
            value(s, "grpc_server_handled_total", **labels, grpc_code="OK")
            > value(before, "grpc_server_handled_total", **labels, grpc_code="OK")
        ),
    )
    sent = value(after, "grpc_server_msg_sent_total", **labels)
    assert sent - value(before, "grpc_server_msg_sent_total", **labels) == 3
    count = "grpc_server_handling_seconds_count"
    assert (
        value(after, count, **labels, grpc_code="OK")
        - value(before, count, **labels, grpc_code="OK")
        == 1
    )


async def test_cancelled_stream_counts_as_cancelled(
    observed: TaskServer, observed_project: resources_pb2.Project
) -> None:
    # Without BDP probing the client's window stays at 64 KiB, so 1.6 MB of tasks
    # cannot all be sent: the server is still streaming when the client cancels.
    await seed_tasks(observed, observed_project.id, 400, description="x" * 4000)
    labels = rpc_labels("StreamTasks", "server_stream")
    before = await scrape(observed)
    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{observed.port}", options=options) as channel:
        call = task_service_pb2_grpc.TaskServiceStub(channel).StreamTasks(
            task_service_pb2.StreamTasksRequest(project_id=observed_project.id, batch_size=5)
        )
        await call.read()
        call.cancel()
        cancelled = value(before, "grpc_server_handled_total", **labels, grpc_code="Canceled")
        after = await wait_for_sample(
            observed,
            lambda s: (
                value(s, "grpc_server_handled_total", **labels, grpc_code="Canceled") > cancelled
            ),
        )
    sent = value(after, "grpc_server_msg_sent_total", **labels)
    assert 1 <= sent - value(before, "grpc_server_msg_sent_total", **labels) < 400 // 5
    assert value(after, "grpc_server_handled_total", **labels, grpc_code="OK") == value(
        before, "grpc_server_handled_total", **labels, grpc_code="OK"
    )


async def test_rpc_past_its_deadline_counts_as_deadline_exceeded(
    observed: TaskServer, observed_channel: grpc.aio.Channel
) -> None:
    # Health.Watch waits for changes after its first message, so the deadline ends it.
    labels = rpc_labels("Watch", "server_stream", HEALTH_SERVICE)
    before = await scrape(observed)
    call = health_pb2_grpc.HealthStub(observed_channel).Watch(
        health_pb2.HealthCheckRequest(service=TASK_SERVICE), timeout=0.5
    )
    await call.read()
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    expired = value(before, "grpc_server_handled_total", **labels, grpc_code="DeadlineExceeded")
    await wait_for_sample(
        observed,
        lambda s: (
            value(s, "grpc_server_handled_total", **labels, grpc_code="DeadlineExceeded") > expired
        ),
    )


async def test_streams_written_with_context_write_are_counted_too(
    observed: TaskServer, observed_channel: grpc.aio.Channel
) -> None:
    # Health.Watch writes with context.write() and never ends by itself.
    labels = rpc_labels("Watch", "server_stream", HEALTH_SERVICE)
    before = await scrape(observed)
    call = health_pb2_grpc.HealthStub(observed_channel).Watch(
        health_pb2.HealthCheckRequest(service=TASK_SERVICE)
    )
    first = await call.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()
    cancelled = value(before, "grpc_server_handled_total", **labels, grpc_code="Canceled")
    after = await wait_for_sample(
        observed,
        lambda s: value(s, "grpc_server_handled_total", **labels, grpc_code="Canceled") > cancelled,
    )
    assert (
        value(after, "grpc_server_msg_sent_total", **labels)
        - value(before, "grpc_server_msg_sent_total", **labels)
        == 1
    )


async def test_pool_gauges_are_read_at_scrape_time(
    observed: TaskServer, observed_tasks: Any, observed_project: resources_pb2.Project
) -> None:
    await create_task(observed_tasks, observed_project.id)  # a connection was used and returned
    samples = await scrape(observed)
    assert value(samples, "taskservice_db_pool_size") == Settings().pool_size
    assert value(samples, "taskservice_db_pool_checked_in") >= 1
    assert value(samples, "taskservice_db_pool_checked_out") == 0  # nothing runs right now
    assert value(samples, "taskservice_db_pool_overflow") == 0
    async with observed.deps.session_factory() as session:
        await session.connection()  # check one out
        held = await scrape(observed)
    assert value(held, "taskservice_db_pool_checked_out") == 1


async def test_metrics_listener_stops_with_the_server(database_url: str) -> None:
    port = free_port()
    running = await start_server(
        Settings(database_url=database_url, address="127.0.0.1:0", metrics_port=port)
    )
    try:
        assert running.metrics_port == port
        # Every registered method's series exist from start-up, at zero (as with
        # go-grpc-prometheus's InitializeMetrics), so rate() works before the first call.
        samples = await scrape(running)
        assert ("grpc_server_started_total", frozenset(rpc_labels("GetTask").items())) in samples
        assert value(samples, "grpc_server_started_total", **rpc_labels("GetTask")) == 0
    finally:
        await running.stop(grace=1)
    assert running.metrics_port == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


async def test_taken_metrics_port_is_port_in_use(database_url: str, observed: TaskServer) -> None:
    taken = Settings(
        database_url=database_url, address="127.0.0.1:0", metrics_port=observed.metrics_port
    )
    with pytest.raises(PortInUse, match="metrics"):
        await start_server(taken)


async def test_metrics_are_off_when_the_port_is_zero(database_url: str) -> None:
    before = set(threading.enumerate())
    running = await start_server(Settings(database_url=database_url, address="127.0.0.1:0"))
    try:
        assert running.metrics is None
        assert running.metrics_port == 0
        started = set(threading.enumerate()) - before
        assert not [thread for thread in started if "serve_forever" in thread.name]
        # Request ids and logs do not depend on metrics.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call = task_service_pb2_grpc.TaskServiceStub(channel).GetTask(
                task_service_pb2.GetTaskRequest(id=MISSING_ID),
                metadata=(("x-request-id", "no-metrics"),),
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
        assert trailer(raised.value.trailing_metadata(), "x-request-id") == "no-metrics"
    finally:
        await running.stop(grace=1)


# --- request ids ----------------------------------------------------------------------


async def test_given_request_id_is_returned_in_trailers(tasks: Any, project: Any) -> None:
    task = await create_task(tasks, project.id)
    call = tasks.GetTask(
        task_service_pb2.GetTaskRequest(id=task.id), metadata=(("x-request-id", "req-ok-1"),)
    )
    assert (await call).id == task.id
    assert trailer(await call.trailing_metadata(), "x-request-id") == "req-ok-1"


async def test_given_request_id_is_returned_with_an_error_and_its_details(tasks: Any) -> None:
    call = tasks.GetTask(
        task_service_pb2.GetTaskRequest(id=MISSING_ID), metadata=(("x-request-id", "req-err-1"),)
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    trailers = raised.value.trailing_metadata()
    assert trailer(trailers, "x-request-id") == "req-err-1"
    assert trailer(trailers, DETAILS_KEY)  # the rich status survives next to it


async def test_missing_request_id_is_generated(
    tasks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RPC_LOGGER)
    call = tasks.GetTask(task_service_pb2.GetTaskRequest(id=MISSING_ID))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    generated = trailer(raised.value.trailing_metadata(), "x-request-id")
    assert generated is not None
    assert uuid.UUID(generated).version == 4
    assert len(rpc_fields(caplog, generated)) == 1


@pytest.mark.parametrize("bad", ["x" * 129, "has space", ""])
async def test_unusable_request_id_is_replaced(tasks: Any, bad: str) -> None:
    call = tasks.GetTask(
        task_service_pb2.GetTaskRequest(id=MISSING_ID),
        metadata=(("x-request-id", bad),),
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    replaced = trailer(raised.value.trailing_metadata(), "x-request-id")
    assert replaced is not None
    assert uuid.UUID(replaced).version == 4


# --- logs -----------------------------------------------------------------------------


async def test_each_rpc_logs_one_line_with_its_fields(
    tasks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RPC_LOGGER)
    request_id = f"log-{uuid.uuid4()}"
    with pytest.raises(grpc.aio.AioRpcError):
        await tasks.GetTask(
            task_service_pb2.GetTaskRequest(id=MISSING_ID),
            metadata=(("x-request-id", request_id), ("x-actor", "alice")),
        )
    [fields] = rpc_fields(caplog, request_id)
    assert fields["method"] == f"/{TASK_SERVICE}/GetTask"
    assert fields["code"] == "NOT_FOUND"
    assert fields["duration_ms"] >= 0
    assert fields["peer"].startswith("ipv4:127.0.0.1:")
    assert fields["principal"] == "alice"
    assert "messages_sent" not in fields


async def test_successful_rpcs_are_not_logged_by_default(
    tasks: Any, project: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RPC_LOGGER)
    await tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=project.id),
        metadata=(("x-request-id", "quiet-ok-1"),),
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await tasks.GetTask(
            task_service_pb2.GetTaskRequest(id=MISSING_ID),
            metadata=(("x-request-id", "loud-error-1"),),
        )
    assert rpc_fields(caplog, "quiet-ok-1") == []
    [fields] = rpc_fields(caplog, "loud-error-1")
    assert fields["code"] == "NOT_FOUND"


async def test_anonymous_caller_is_logged_as_anonymous(
    observed_tasks: Any, observed_project: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RPC_LOGGER)
    await observed_tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=observed_project.id),
        metadata=(("x-request-id", "anon-1"),),
    )
    [fields] = rpc_fields(caplog, "anon-1")
    assert fields["code"] == "OK"
    assert fields["principal"] == "anonymous"


async def test_stream_logs_one_line_when_it_ends(
    observed: TaskServer,
    observed_tasks: Any,
    observed_project: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=RPC_LOGGER)
    await seed_tasks(observed, observed_project.id, 3)
    request = task_service_pb2.StreamTasksRequest(project_id=observed_project.id, batch_size=1)
    call = observed_tasks.StreamTasks(request, metadata=(("x-request-id", "stream-1"),))
    assert len([response async for response in call]) == 3
    assert trailer(await call.trailing_metadata(), "x-request-id") == "stream-1"
    [fields] = rpc_fields(caplog, "stream-1")
    assert fields["method"] == f"/{TASK_SERVICE}/StreamTasks"
    assert fields["code"] == "OK"
    assert fields["messages_sent"] == 3


async def test_rpc_lines_are_json_in_json_format(tasks: Any) -> None:
    with captured_rpc_lines() as stream:
        with pytest.raises(grpc.aio.AioRpcError):
            await tasks.GetTask(
                task_service_pb2.GetTaskRequest(id=MISSING_ID),
                metadata=(("x-request-id", "json-1"),),
            )
    [entry] = json_lines_with(stream, "json-1")
    assert entry["level"] == "INFO"
    assert entry["logger"] == RPC_LOGGER
    assert entry["message"] == "rpc finished"
    assert entry["method"] == f"/{TASK_SERVICE}/GetTask"
    assert entry["code"] == "NOT_FOUND"
    assert isinstance(entry["duration_ms"], float)
    assert entry["peer"].startswith("ipv4:127.0.0.1:")
    assert entry["principal"] == "anonymous"
    assert entry["time"].endswith("+00:00")


def _record(message: str, **fields: Any) -> logging.LogRecord:
    record = logging.LogRecord("service.test", logging.INFO, __file__, 1, message, (), None)
    if fields:
        record.fields = fields
    return record


def test_text_lines_append_fields_and_quote_what_needs_it() -> None:
    line = TextFormatter().format(_record("rpc finished", code="OK", principal='eve "x"\nfake=1'))
    assert line.endswith(' rpc finished code=OK principal="eve \\"x\\"\\nfake=1"')
    assert "\n" not in line


def test_lines_logged_during_an_rpc_carry_its_request_id() -> None:
    def format_inside_rpc() -> tuple[str, str]:
        current_request_id.set("inside-1")
        record = _record("unexpected error")
        return TextFormatter().format(record), JsonFormatter().format(record)

    text, as_json = contextvars.copy_context().run(format_inside_rpc)
    assert text.endswith("unexpected error request_id=inside-1")
    assert json.loads(as_json)["request_id"] == "inside-1"
    assert "request_id" not in TextFormatter().format(_record("outside"))


def test_json_lines_carry_exceptions_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "service.test", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed x"
    assert "ValueError: boom" in entry["exception"]
