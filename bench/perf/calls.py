"""The calls under load: gRPC requests and REST requests, each spread over several variants."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from bench.core.config import DatabaseConfig
from bench.perf.config import ONE_CHANNEL
from taskmanager.v1 import resources_pb2
from taskmanager.v1 import task_service_pb2 as pb

SERVICE_PATH = "/taskmanager.v1.TaskService/"
PAGE_SIZE = 50
FRAME_HEADER = 5  # a gRPC message's compressed flag and 4-byte length
MISSING_ID = 10**12
HTTP_TIMEOUT = 10.0
CREATED_TITLE = "Benchmark create"
UPDATED_DESCRIPTION = "Updated by the perf bench."
TASKS_WITH_SUBTASKS = """
SELECT t.id FROM tasks t
WHERE t.assignee_id IS NOT NULL AND t.delete_time IS NULL
  AND EXISTS (SELECT 1 FROM tasks c WHERE c.parent_task_id = t.id)
ORDER BY t.id
"""
COUNT_TASKS = "SELECT count(*) FROM tasks"
SUM_VERSIONS = "SELECT sum(version) FROM tasks WHERE id = ANY($1::bigint[])"

Check = Callable[[Any, Any], bool]


@dataclass(frozen=True)
class Targets:
    """The rows the calls address, one per variant."""

    task_ids: tuple[int, ...]
    project_ids: tuple[int, ...]
    worker_ids: tuple[int, ...]


@dataclass(frozen=True)
class Effect:
    """A query whose value grows by one per successful write (the write check)."""

    sql: str
    args: tuple[Any, ...] = ()

    async def read(self, dsn: str) -> int:
        """The query's value now."""
        connection = await asyncpg.connect(dsn)
        try:
            return int(await connection.fetchval(self.sql, *self.args))
        finally:
            await connection.close()


@dataclass(frozen=True)
class GrpcCall:
    """A unary TaskService method and its request variants."""

    method: str
    requests: tuple[Message, ...]
    response_type: type[Message]
    check: Check = field(repr=False)  # (request, response) -> the response is right
    effect: Effect | None = None

    @property
    def path(self) -> str:
        """HTTP/2 :path of the method."""
        return SERVICE_PATH + self.method

    def frames(self) -> tuple[bytes, ...]:
        """Each request as a gRPC message frame (uncompressed flag, length, protobuf)."""
        return tuple(grpc_frame(request.SerializeToString()) for request in self.requests)


@dataclass(frozen=True)
class HttpRequest:
    """One REST request variant."""

    method: str
    path: str
    body: str = ""

    def send(self, base_url: str) -> tuple[int, Any]:
        """Send it once: the HTTP status and the decoded JSON answer (None on an error status)."""
        request = urllib.request.Request(
            base_url + self.path,
            data=self.body.encode() if self.body else None,
            method=self.method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, None


@dataclass(frozen=True)
class HttpCall:
    """A REST endpoint's request variants."""

    requests: tuple[HttpRequest, ...]
    check: Check = field(repr=False)  # (request, decoded JSON) -> the response is right
    effect: Effect | None = None


def grpc_frame(payload: bytes) -> bytes:
    """A length-prefixed gRPC message (no compression)."""
    return b"\x00" + len(payload).to_bytes(FRAME_HEADER - 1, "big") + payload


def spread(values: Sequence[int], count: int) -> tuple[int, ...]:
    """`count` values evenly spaced over `values` (repeating if there are fewer)."""
    if not values:
        raise ValueError("nothing to spread")
    if len(values) < count:
        return tuple(values[i % len(values)] for i in range(count))
    return tuple(values[i * len(values) // count] for i in range(count))


async def pick_targets(cfg: DatabaseConfig, count: int) -> Targets:
    """`count` task ids, projects and workers, one per load-generator connection: h2load posts
    one fixed body per process. Reads would do with one id (every row is cached), but
    concurrent UpdateTasks of one row would measure PostgreSQL's row-lock queue. The tasks
    have an assignee and subtasks, so the FULL view has both."""
    connection = await asyncpg.connect(cfg.dsn)
    try:
        ids = [row["id"] for row in await connection.fetch(TASKS_WITH_SUBTASKS)]
    finally:
        await connection.close()
    return Targets(
        task_ids=spread(ids, count),
        project_ids=spread(range(1, cfg.projects + 1), count),
        worker_ids=spread(range(1, cfg.workers + 1), count),
    )


def calls_by_key(targets: Targets) -> dict[str, GrpcCall | HttpCall]:
    """Every call under load, by measurement key."""
    basic = get_task(targets, resources_pb2.TASK_VIEW_BASIC)
    keys = ("handtuned", "handtuned_uvloop", "get_basic", "workers2", *ONE_CHANNEL)
    return {
        **dict.fromkeys(keys, basic),
        # The transport ceiling answers with one constant Task, whatever the id.
        "constant": replace(basic, check=lambda _q, _r: True),
        "rest_get": rest_get(targets),
        "get_full": get_task(targets, resources_pb2.TASK_VIEW_FULL),
        "list": list_tasks(targets),
        "rest_post": rest_post(targets),
        "create": create_task(targets),
        "update": update_task(targets),
    }


def get_task(targets: Targets, view: resources_pb2.TaskView.ValueType) -> GrpcCall:
    """GetTask of each target task in `view`."""
    requests = tuple(pb.GetTaskRequest(id=i, view=view) for i in targets.task_ids)
    return GrpcCall("GetTask", requests, resources_pb2.Task, _same_id)


def missing_task() -> GrpcCall:
    """GetTask of an id that does not exist: NOT_FOUND, in an HTTP 200 response."""
    request = pb.GetTaskRequest(id=MISSING_ID)
    return GrpcCall("GetTask", (request,), resources_pb2.Task, lambda _q, _r: False)


def list_tasks(targets: Targets) -> GrpcCall:
    """ListTasks, first page of PAGE_SIZE, filtered by each target project."""
    requests = tuple(
        pb.ListTasksRequest(project_id=p, page_size=PAGE_SIZE) for p in targets.project_ids
    )
    return GrpcCall("ListTasks", requests, pb.ListTasksResponse, _full_page)


def create_task(targets: Targets) -> GrpcCall:
    """CreateTask in each target project, assigned to a worker (no request_id)."""
    requests = tuple(
        pb.CreateTaskRequest(task=resources_pb2.Task(**_new_task(project, worker)))
        for project, worker in zip(targets.project_ids, targets.worker_ids, strict=True)
    )
    return GrpcCall(
        "CreateTask", requests, resources_pb2.Task, _created, effect=Effect(COUNT_TASKS)
    )


def update_task(targets: Targets) -> GrpcCall:
    """UpdateTask of each target task's description (mask `description`, no etag)."""
    requests = tuple(
        pb.UpdateTaskRequest(
            task=resources_pb2.Task(id=i, description=UPDATED_DESCRIPTION),
            update_mask=FieldMask(paths=["description"]),
        )
        for i in targets.task_ids
    )
    effect = Effect(SUM_VERSIONS, (list(targets.task_ids),))
    return GrpcCall("UpdateTask", requests, resources_pb2.Task, _updated, effect=effect)


def rest_get(targets: Targets) -> HttpCall:
    """GET /tasks/{id} of each target task."""
    requests = tuple(HttpRequest("GET", f"/tasks/{i}") for i in targets.task_ids)
    return HttpCall(requests, lambda q, r: q.path == f"/tasks/{r['id']}")


def rest_post(targets: Targets) -> HttpCall:
    """POST /tasks: the REST peer's CreateTask."""
    requests = tuple(
        HttpRequest("POST", "/tasks", json.dumps(_new_task(project, worker, rest=True)))
        for project, worker in zip(targets.project_ids, targets.worker_ids, strict=True)
    )
    return HttpCall(
        requests,
        lambda _q, r: r["title"] == CREATED_TITLE and r["id"] > 0,
        effect=Effect(COUNT_TASKS),
    )


def _new_task(project: int, worker: int, rest: bool = False) -> dict[str, Any]:
    return {
        "project_id": project,
        "title": CREATED_TITLE,
        "description": "Created by the perf bench.",
        "priority": 3 if rest else resources_pb2.TASK_PRIORITY_HIGH,
        "tags": ["bench", "perf"],
        "assignee_id": worker,
    }


def _same_id(request: Any, response: Any) -> bool:
    return bool(response.id == request.id)


def _full_page(request: Any, response: Any) -> bool:
    tasks = response.tasks
    return len(tasks) > 0 and all(task.project_id == request.project_id for task in tasks)


def _created(request: Any, response: Any) -> bool:
    return bool(response.id > 0 and response.project_id == request.task.project_id)


def _updated(request: Any, response: Any) -> bool:
    return bool(response.id == request.task.id and response.description == UPDATED_DESCRIPTION)
