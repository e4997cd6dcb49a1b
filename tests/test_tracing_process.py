"""Tracing end to end: `python -m service` in its own process, configured by OTEL_* alone.

The caller sends W3C `traceparent`; the spans arrive at a real OTLP/gRPC receiver in
this process. SIGTERM must flush what is still queued before the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.storage import migrate
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.infra.service_process import ServiceProcess, service_process
from tests.otlp_receiver import SERVER, trace_receiver
from tests.trace_callers import MISSING_ID, Caller, assert_no_values

TIMEOUT = 30.0
TOKEN, PRINCIPAL = "tr4ce-token", "tracer"


@pytest.fixture(scope="module")
async def pg_url(postgres_url: str) -> str:
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    return postgres_url


def log_entries(service: ServiceProcess) -> list[dict[str, object]]:
    """The service's JSON log lines."""
    return [json.loads(line) for line in service.log.splitlines() if line.startswith("{")]


@asynccontextmanager
async def _service(url: str, tmp_path: Path, **otel: str) -> AsyncIterator[ServiceProcess]:
    """The service with the given OTEL_* variables (and no others)."""
    tokens = json.dumps({TOKEN: PRINCIPAL})
    flags = ("--database-url", url, "--log-format", "json", "--rpc-log", "all")
    env = {"OTEL_BSP_SCHEDULE_DELAY": "50", **otel}
    async with service_process(
        *flags, "--auth-tokens", tokens, log_path=tmp_path / "service.log", env=env
    ) as service:
        yield service


Metadata = tuple[tuple[str, str], ...]


def _metadata(caller: Caller, request_id: str) -> Metadata:
    return caller.metadata(**{"authorization": f"Bearer {TOKEN}", "x-request-id": request_id})


async def _call(
    service: ServiceProcess, secret: str
) -> dict[str, tuple[Caller, str, grpc.StatusCode]]:
    """CreateProject, CreateTask, GetTask (found, missing, invalid), StreamTasks: each
    call with a caller of its own → {name: (caller, request id, code)}."""
    done: dict[str, tuple[Caller, str, grpc.StatusCode]] = {}

    async def traced(name: str, call: Callable[[Metadata], Awaitable[Any]]) -> Any:
        caller, request_id = Caller.new(), str(uuid.uuid4())
        code, result = grpc.StatusCode.OK, None
        try:
            result = await call(_metadata(caller, request_id))
        except grpc.aio.AioRpcError as error:
            code = error.code()
        done[name] = (caller, request_id, code)
        return result

    async with grpc.aio.insecure_channel(service.address) as channel:
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        new_project = project_service_pb2.CreateProjectRequest(name=secret)
        project = await traced(
            "CreateProject", lambda m: projects.CreateProject(new_project, metadata=m)
        )
        task = resources_pb2.Task(project_id=project.id, title=secret)
        new_task = task_service_pb2.CreateTaskRequest(task=task)
        created = await traced("CreateTask", lambda m: tasks.CreateTask(new_task, metadata=m))
        get = task_service_pb2.GetTaskRequest(id=created.id)
        await traced("GetTask", lambda m: tasks.GetTask(get, metadata=m))
        missing = task_service_pb2.GetTaskRequest(id=MISSING_ID)
        await traced("missing", lambda m: tasks.GetTask(missing, metadata=m))
        invalid = task_service_pb2.GetTaskRequest(id=-1)
        await traced("invalid", lambda m: tasks.GetTask(invalid, metadata=m))
        stream = task_service_pb2.StreamTasksRequest(project_id=project.id, batch_size=1)

        async def read_stream(metadata: Metadata) -> list[Any]:
            return [r async for r in tasks.StreamTasks(stream, metadata=metadata)]

        await traced("StreamTasks", read_stream)
    return done


TASKS, PROJECTS = "taskmanager.v1.TaskService/", "taskmanager.v1.ProjectService/"
# What each call answers, and the statements it runs on PostgreSQL (README: GetTask is one
# round trip, CreateTask one statement between BEGIN and COMMIT; a stream one SELECT a batch).
EXPECTED = {
    "CreateProject": (
        PROJECTS + "CreateProject",
        grpc.StatusCode.OK,
        ["INSERT audit_events", "INSERT projects"],
    ),
    "CreateTask": (TASKS + "CreateTask", grpc.StatusCode.OK, ["INSERT audit_events"]),
    "GetTask": (TASKS + "GetTask", grpc.StatusCode.OK, ["SELECT tasks"]),
    "missing": (TASKS + "GetTask", grpc.StatusCode.NOT_FOUND, ["SELECT tasks"]),
    "invalid": (TASKS + "GetTask", grpc.StatusCode.INVALID_ARGUMENT, []),
    "StreamTasks": (TASKS + "StreamTasks", grpc.StatusCode.OK, ["SELECT tasks"]),
}


async def test_spans_follow_the_caller_into_the_service_process(
    pg_url: str, tmp_path: Path
) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    async with trace_receiver() as (receiver, endpoint):
        async with _service(
            pg_url, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="tasks-e2e"
        ) as service:
            calls = await _call(service, secret)
            spans = await receiver.wait_for(
                lambda spans: (
                    {caller.span_id for caller, _, _ in calls.values()}
                    <= {s.parent_id for s in spans}
                )
            )
            assert await service.terminate() == 0
        for name, (method, code, statements) in EXPECTED.items():
            caller, request_id, got = calls[name]
            assert got == code, name
            (span,) = [s for s in spans if s.parent_id == caller.span_id]
            assert (span.service, span.name, span.span.kind) == ("tasks-e2e", method, SERVER)
            assert span.trace_id == caller.trace_id
            assert span.attributes["rpc.grpc.status_code"] == code.value[0], name
            assert span.attributes["taskservice.request_id"] == request_id
            assert span.attributes["enduser.id"] == PRINCIPAL
            children = sorted(s.name for s in spans if s.parent_id == span.span_id)
            assert children == statements, (name, children)
        assert_no_values(spans, secret, str(MISSING_ID))
        # The log lines of the traced calls carry the caller's trace and the server span.
        caller, request_id, _ = calls["missing"]
        (line,) = [e for e in log_entries(service) if e.get("request_id") == request_id]
        (span,) = [s for s in spans if s.parent_id == caller.span_id]
        assert (line["trace_id"], line["span_id"]) == (caller.trace_id, span.span_id)


async def test_with_sampling_off_nothing_arrives(pg_url: str, tmp_path: Path) -> None:
    """New traces off, a caller's decision followed; nothing leaves before SIGTERM (a
    10-minute batch delay), so what arrives is what the shutdown flushed."""
    control, unsampled = Caller.new(), Caller.new(sampled=False)
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_TRACES_SAMPLER": "parentbased_always_off",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    async with trace_receiver() as (receiver, endpoint):
        otel["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        async with _service(pg_url, tmp_path, **otel) as service:
            async with grpc.aio.insecure_channel(service.address) as channel:
                tasks = task_service_pb2_grpc.TaskServiceStub(channel)
                bearer = f"Bearer {TOKEN}"
                auth = (("authorization", bearer),)
                project = await project_service_pb2_grpc.ProjectServiceStub(channel).CreateProject(
                    project_service_pb2.CreateProjectRequest(name=f"off-{uuid.uuid4().hex}"),
                    metadata=auth,
                )
                task = resources_pb2.Task(project_id=project.id, title="unsampled")
                await tasks.CreateTask(task_service_pb2.CreateTaskRequest(task=task), metadata=auth)
                stream = task_service_pb2.StreamTasksRequest(project_id=project.id)
                for metadata in (
                    auth,
                    unsampled.metadata(authorization=bearer),
                    control.metadata(authorization=bearer),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as missing:
                        await tasks.GetTask(
                            task_service_pb2.GetTaskRequest(id=MISSING_ID), metadata=metadata
                        )
                    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
                    assert [r async for r in tasks.StreamTasks(stream, metadata=metadata)]
            assert receiver.requests == 0
            assert await service.terminate() == 0
        # Only the sampled caller's two calls arrive, each with its statements.
        assert {span.trace_id for span in receiver.spans} == {control.trace_id}
        names = sorted(span.name for span in receiver.spans if span.parent_id == control.span_id)
        assert names == [
            "taskmanager.v1.TaskService/GetTask",
            "taskmanager.v1.TaskService/StreamTasks",
        ]
