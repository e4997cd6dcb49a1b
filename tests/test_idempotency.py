"""Idempotent creates (AIP-155): a retried request_id returns the first response, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from service.runtime.server import TaskServer, start_server
from service.settings import Settings
from service.storage import migrate
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
)
from tests.conftest import unique
from tests.infra.service_process import service_process
from tests.rpc_errors import expect_failure
from tests.safe_writes import (
    DEADLINE,
    Projects,
    Tasks,
    Workers,
    list_tasks,
    new_request_id,
    update_task,
)

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer

CONCURRENT_CALLS = 20
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS


def create_task_request(
    project_id: int, request_id: str, **fields: Any
) -> task_service_pb2.CreateTaskRequest:
    fields.setdefault("title", "idempotent")
    return task_service_pb2.CreateTaskRequest(
        task=resources_pb2.Task(project_id=project_id, **fields), request_id=request_id
    )


async def create(tasks: Tasks, request: task_service_pb2.CreateTaskRequest) -> resources_pb2.Task:
    created: resources_pb2.Task = await tasks.CreateTask(request, timeout=DEADLINE)
    return created


# --- CreateTask ----------------------------------------------------------------------------


async def test_a_retried_create_task_returns_the_first_response_and_creates_nothing(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request = create_task_request(project.id, new_request_id(), tags=["x"])

    first = await create(tasks, request)
    retried = await create(tasks, request)

    assert retried == first
    assert [t.id for t in await list_tasks(tasks, project.id)] == [first.id]


async def test_the_retry_returns_the_first_response_even_after_the_task_changed(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request = create_task_request(project.id, new_request_id(), title="as created")
    first = await create(tasks, request)
    await update_task(tasks, resources_pb2.Task(id=first.id, title="changed since"), ["title"])

    retried = await create(tasks, request)

    assert retried == first
    assert len(await list_tasks(tasks, project.id)) == 1


async def test_request_id_is_compared_as_a_uuid_not_as_text(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request_id = new_request_id()
    first = await create(tasks, create_task_request(project.id, request_id))

    retried = await create(tasks, create_task_request(project.id, request_id.upper()))

    assert retried == first
    assert len(await list_tasks(tasks, project.id)) == 1


async def test_without_request_id_every_create_makes_a_new_task(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request = create_task_request(project.id, "")

    first = await create(tasks, request)
    second = await create(tasks, request)

    assert first.id != second.id
    assert len(await list_tasks(tasks, project.id)) == 2


async def test_a_reused_request_id_with_another_payload_is_already_exists(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request_id = new_request_id()
    first = await create(tasks, create_task_request(project.id, request_id, title="first"))

    failure = await expect_failure(
        create(tasks, create_task_request(project.id, request_id, title="second")), ALREADY_EXISTS
    )

    assert failure.info.reason == "REQUEST_ID_REUSED"
    assert [t.id for t in await list_tasks(tasks, project.id)] == [first.id]


async def test_a_request_id_used_by_another_method_is_already_exists(
    tasks: Tasks, workers: Workers, project: resources_pb2.Project
) -> None:
    request_id = new_request_id()
    await create(tasks, create_task_request(project.id, request_id))

    failure = await expect_failure(
        workers.CreateWorker(
            worker_service_pb2.CreateWorkerRequest(
                worker=resources_pb2.Worker(name="W", email=f"{unique('w')}@example.com"),
                request_id=request_id,
            )
        ),
        ALREADY_EXISTS,
    )

    assert failure.info.reason == "REQUEST_ID_REUSED"


async def test_a_failed_create_does_not_use_up_its_request_id(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request = create_task_request(project.id, new_request_id(), assignee_id=10**12)

    for _ in range(2):  # the retry fails the same way; no "first response" was remembered
        failure = await expect_failure(create(tasks, request), grpc.StatusCode.FAILED_PRECONDITION)
        assert failure.info.reason == "ASSIGNEE_NOT_FOUND"

    assert await list_tasks(tasks, project.id) == []


# --- malformed request ids -----------------------------------------------------------------

MALFORMED = ["not-a-uuid", "1234", "{" + "0" * 31 + "}", "00000000-0000-0000-0000-00000000000g"]


def _create_calls(
    tasks: Tasks, projects: Projects, workers: Workers, project_id: int, request_id: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "CreateTask": lambda: tasks.CreateTask(create_task_request(project_id, request_id)),
        "CreateProject": lambda: projects.CreateProject(
            project_service_pb2.CreateProjectRequest(
                project=resources_pb2.Project(name=unique("p")), request_id=request_id
            )
        ),
        "CreateWorker": lambda: workers.CreateWorker(
            worker_service_pb2.CreateWorkerRequest(
                worker=resources_pb2.Worker(name="W", email=f"{unique('w')}@example.com"),
                request_id=request_id,
            )
        ),
        "BatchCreateTasks": lambda: tasks.BatchCreateTasks(
            task_service_pb2.BatchCreateTasksRequest(
                requests=[create_task_request(project_id, "")], request_id=request_id
            )
        ),
    }


@pytest.mark.parametrize(
    "method", ["CreateTask", "CreateProject", "CreateWorker", "BatchCreateTasks"]
)
@pytest.mark.parametrize("request_id", MALFORMED)
async def test_a_malformed_request_id_is_invalid(
    tasks: Tasks,
    projects: Projects,
    workers: Workers,
    project: resources_pb2.Project,
    method: str,
    request_id: str,
) -> None:
    call = _create_calls(tasks, projects, workers, project.id, request_id)[method]

    failure = await expect_failure(call(), grpc.StatusCode.INVALID_ARGUMENT)

    assert failure.fields == ["request_id"]
    assert await list_tasks(tasks, project.id) == []


# --- CreateWorker and CreateProject --------------------------------------------------------


async def test_a_retried_create_worker_returns_the_first_response(workers: Workers) -> None:
    request = worker_service_pb2.CreateWorkerRequest(
        worker=resources_pb2.Worker(name="Once", email=f"{unique('once')}@example.com"),
        request_id=new_request_id(),
    )

    first = await workers.CreateWorker(request)
    retried = await workers.CreateWorker(request)

    assert retried == first


async def test_a_reused_worker_request_id_with_another_payload_is_already_exists(
    workers: Workers,
) -> None:
    request_id = new_request_id()
    await workers.CreateWorker(
        worker_service_pb2.CreateWorkerRequest(
            worker=resources_pb2.Worker(name="A", email=f"{unique('a')}@example.com"),
            request_id=request_id,
        )
    )

    failure = await expect_failure(
        workers.CreateWorker(
            worker_service_pb2.CreateWorkerRequest(
                worker=resources_pb2.Worker(name="B", email=f"{unique('b')}@example.com"),
                request_id=request_id,
            )
        ),
        ALREADY_EXISTS,
    )

    assert failure.info.reason == "REQUEST_ID_REUSED"


async def test_a_retried_create_project_returns_the_first_response(projects: Projects) -> None:
    request = project_service_pb2.CreateProjectRequest(
        project=resources_pb2.Project(name=unique("once")), request_id=new_request_id()
    )
    first = await projects.CreateProject(request)

    retried = await projects.CreateProject(request)  # actual: ALREADY_EXISTS PROJECT_NAME_TAKEN

    assert retried == first


async def test_a_reused_project_request_id_with_another_payload_is_already_exists(
    projects: Projects,
) -> None:
    request_id = new_request_id()
    await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(
            project=resources_pb2.Project(name=unique("a")), request_id=request_id
        )
    )

    failure = await expect_failure(  # actual: a second project is created
        projects.CreateProject(
            project_service_pb2.CreateProjectRequest(
                project=resources_pb2.Project(name=unique("b")), request_id=request_id
            )
        ),
        ALREADY_EXISTS,
    )

    assert failure.info.reason == "REQUEST_ID_REUSED"


# --- concurrent retries --------------------------------------------------------------------


async def _create_concurrently(
    stubs: list[Tasks], request: task_service_pb2.CreateTaskRequest
) -> list[resources_pb2.Task]:
    """CONCURRENT_CALLS identical creates at once, spread round-robin over `stubs`."""
    async with asyncio.timeout(DEADLINE):
        return await asyncio.gather(
            *(create(stubs[i % len(stubs)], request) for i in range(CONCURRENT_CALLS))
        )


async def test_concurrent_identical_creates_make_one_task_and_give_identical_responses(
    tasks: Tasks, project: resources_pb2.Project
) -> None:
    request = create_task_request(project.id, new_request_id(), tags=["race"])

    responses = await _create_concurrently([tasks], request)

    assert all(response == responses[0] for response in responses)
    assert [t.id for t in await list_tasks(tasks, project.id)] == [responses[0].id]


@asynccontextmanager
async def _in_process_server(database_url: str) -> AsyncIterator[TaskServer]:
    running = await start_server(Settings(database_url=database_url, address="127.0.0.1:0"))
    try:
        yield running
    finally:
        await running.stop(grace=1)


@asynccontextmanager
async def _channel(port: int) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), DEADLINE)
        yield channel


@pytest.fixture
async def migrated_postgres_url(postgres_url: str) -> str:
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    return postgres_url


async def _new_project_id(channel: grpc.aio.Channel) -> int:
    stub = project_service_pb2_grpc.ProjectServiceStub(channel)
    created = await stub.CreateProject(
        project_service_pb2.CreateProjectRequest(project=resources_pb2.Project(name=unique("p")))
    )
    return int(created.id)


async def test_identical_creates_split_over_two_servers_on_one_postgres_make_one_task(
    migrated_postgres_url: str,
) -> None:
    async with (
        _in_process_server(migrated_postgres_url) as first,
        _in_process_server(migrated_postgres_url) as second,
        _channel(first.port) as first_channel,
        _channel(second.port) as second_channel,
    ):
        assert first.engine is not second.engine  # separate pools: separate "processes"
        stubs = [
            task_service_pb2_grpc.TaskServiceStub(first_channel),
            task_service_pb2_grpc.TaskServiceStub(second_channel),
        ]
        project_id = await _new_project_id(first_channel)
        request = create_task_request(project_id, new_request_id())

        responses = await _create_concurrently(stubs, request)

        assert all(response == responses[0] for response in responses)
        for stub in stubs:
            assert [t.id for t in await list_tasks(stub, project_id)] == [responses[0].id]


async def test_identical_creates_split_over_a_server_and_a_server_process_make_one_task(
    migrated_postgres_url: str,
) -> None:
    async with (
        _in_process_server(migrated_postgres_url) as local,
        service_process("--database-url", migrated_postgres_url) as remote,
        _channel(local.port) as local_channel,
        _channel(remote.port) as remote_channel,
    ):
        stubs = [
            task_service_pb2_grpc.TaskServiceStub(local_channel),
            task_service_pb2_grpc.TaskServiceStub(remote_channel),
        ]
        project_id = await _new_project_id(local_channel)
        request = create_task_request(project_id, new_request_id())

        responses = await _create_concurrently(stubs, request)

        assert all(response == responses[0] for response in responses)
        assert [t.id for t in await list_tasks(stubs[1], project_id)] == [responses[0].id]
