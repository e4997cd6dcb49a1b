"""Mixed client traffic (creates, gets, lists, streams, updates) and a record of its outcome."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import grpc
from google.protobuf import field_mask_pb2

from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.infra.databases import asyncpg_dsn

STREAM_TIMEOUT = 30.0
SEEDED_TASKS = 20


async def new_project(channel: grpc.aio.Channel, tasks: int) -> tuple[int, list[int]]:
    """A project with `tasks` tasks, created through `channel`; (project id, task ids)."""
    projects = project_service_pb2_grpc.ProjectServiceStub(channel)
    project = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(
            project=resources_pb2.Project(name=f"load-{uuid.uuid4().hex[:10]}"),
            request_id=str(uuid.uuid4()),
        )
    )
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    ids = []
    for index in range(tasks):
        task = await stub.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(project_id=project.id, title=f"seed {index}"),
                request_id=str(uuid.uuid4()),
            )
        )
        ids.append(task.id)
    return project.id, ids


def stream_was_cut(error: grpc.aio.AioRpcError) -> bool:
    """A stream broken by its server's death: UNAVAILABLE, or nginx's reset of it.

    When a replica dies after its response began, nginx can no longer answer a status and
    resets the client's stream (RST_STREAM INTERNAL_ERROR), which gRPC reports as INTERNAL.
    """
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code() == grpc.StatusCode.INTERNAL and "RST_STREAM" in (error.details() or "")


@dataclass
class MixedLoad:
    """Callers sharing one channel, as a client service's workers do; failures are recorded.

    Reads check what they get against the seeded project (creates go to another one, so
    lists and streams know what to expect). Updates carry no etag and are not retried by
    the published policy: their failures are counted apart, not hidden.
    """

    channel: grpc.aio.Channel
    project_id: int
    seeded: list[int]
    creates_project_id: int
    calls: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (operation, error)
    update_failures: Counter[str] = field(default_factory=Counter)
    created: dict[str, int] = field(default_factory=dict)  # request_id -> task id
    stream_resumes: Counter[str] = field(default_factory=Counter)
    turns: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    async def prepare(cls, channel: grpc.aio.Channel) -> MixedLoad:
        """Seed a project to read and make an empty one to create in."""
        project_id, seeded = await new_project(channel, tasks=SEEDED_TASKS)
        creates_project_id, _ = await new_project(channel, tasks=0)
        return cls(channel, project_id, seeded, creates_project_id)

    @property
    def tasks(self) -> task_service_pb2_grpc.TaskServiceStub:
        return task_service_pb2_grpc.TaskServiceStub(self.channel)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def create(self) -> None:
        request_id = str(uuid.uuid4())
        task = await self.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(
                    project_id=self.creates_project_id, title=f"load {request_id}"
                ),
                request_id=request_id,
            )
        )
        self.created[request_id] = task.id

    async def get(self) -> None:
        task_id = self.seeded[next(self.turns) % len(self.seeded)]
        task = await self.tasks.GetTask(task_service_pb2.GetTaskRequest(id=task_id))
        assert task.id == task_id

    async def list(self) -> None:
        request = task_service_pb2.ListTasksRequest(
            project_id=self.project_id, page_size=10, order_by="create_time"
        )
        first = await self.tasks.ListTasks(request)
        request.page_token = first.next_page_token
        second = await self.tasks.ListTasks(request)
        assert [task.id for task in first.tasks] == self.seeded[:10]
        assert [task.id for task in second.tasks] == self.seeded[10:20]

    async def stream(self) -> None:
        """Every task of the project in batches; a stream cut after data resumes from its token."""
        request = task_service_pb2.StreamTasksRequest(project_id=self.project_id, batch_size=5)
        seen: list[int] = []
        while True:
            try:
                async for batch in self.tasks.StreamTasks(request, timeout=STREAM_TIMEOUT):
                    seen.extend(task.id for task in batch.tasks)
                    request.resume_token = batch.resume_token
                break
            except grpc.aio.AioRpcError as error:
                # The retry policy cannot replay a stream that already delivered data;
                # the resume token lets the client go on from there (README: Retries).
                if not (request.resume_token and stream_was_cut(error)):
                    raise
                self.stream_resumes[f"{error.code().name}: {error.details()}"] += 1
        assert seen == self.seeded

    async def update(self) -> None:
        turn = next(self.turns)
        request = task_service_pb2.UpdateTaskRequest(
            task=resources_pb2.Task(
                id=self.seeded[turn % len(self.seeded)], description=f"turn {turn}"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
        try:
            await self.tasks.UpdateTask(request)
        except grpc.aio.AioRpcError as error:
            self.update_failures[error.code().name] += 1

    async def caller(self, number: int, stop: asyncio.Event) -> None:
        """One caller: the operations in turn (creates and gets twice as often) until `stop`."""
        operations: list[Callable[[], Awaitable[None]]] = [
            self.create,
            self.get,
            self.list,
            self.stream,
            self.create,
            self.get,
            self.update,
        ]
        for turn in itertools.count(number):
            if stop.is_set():
                return
            operation = operations[turn % len(operations)]
            self.calls[operation.__name__] += 1
            try:
                await operation()
            except grpc.aio.AioRpcError as error:
                self.failures.append(
                    (operation.__name__, f"{error.code().name}: {error.details()}")
                )
            except AssertionError as error:
                self.failures.append((operation.__name__, f"wrong answer: {error}"))

    @asynccontextmanager
    async def running(self, callers: int) -> AsyncIterator[MixedLoad]:
        """`callers` concurrent callers for the duration of the block; all stopped on exit."""
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self.caller(number, stop)) for number in range(callers)]
        try:
            yield self
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    async def wait_for_calls(self, count: int, timeout: float = 120.0) -> None:
        """Until `count` more calls have been made (the load is bounded by count, not time)."""
        target = self.total + count
        deadline = time.monotonic() + timeout
        while self.total < target:
            assert time.monotonic() < deadline, f"{count} calls took over {timeout}s"
            await asyncio.sleep(0.02)

    def figures(self) -> dict[str, object]:
        return {
            "calls": dict(self.calls),
            "creates": len(self.created),
            "failed": len(self.failures),
            "stream_resumes": dict(self.stream_resumes),
            "update_failures": dict(self.update_failures),
        }


async def stored_creates(database_url: str, load: MixedLoad) -> list[tuple[str, int]]:
    """(request_id, task id) of every task the load's creates stored, read from PostgreSQL."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=30)
    try:
        rows = await connection.fetch(
            "SELECT title, id FROM tasks WHERE project_id = $1", load.creates_project_id
        )
    finally:
        await connection.close()
    return [(row["title"].removeprefix("load "), row["id"]) for row in rows]
