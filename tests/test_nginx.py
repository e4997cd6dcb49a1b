"""Real nginx (deploy/nginx/taskservice.conf) in front of three server processes on one database.

Clients use the published retry policy (protos/taskmanager/v1/service_config.json). The
replicas are separate processes so that a SIGKILL is a real crash.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.runtime.server import start_server
from service.settings import Settings
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.infra.clients import retrying_channel
from tests.infra.databases import asyncpg_dsn, throwaway_postgres
from tests.infra.nginx import SHIPPED_SITE, Nginx, render_site, running_nginx
from tests.infra.ports import free_ports
from tests.infra.server_process import ServerProcess, server_processes

log = logging.getLogger(__name__)
SECRET = "balanced-replicas-share-this-page-token-secret"
TIMEOUT = 30.0


@dataclass
class Cluster:
    """Three replicas on one PostgreSQL database behind one nginx."""

    database_url: str
    replicas: list[ServerProcess]
    nginx: Nginx


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    directory = tmp_path_factory.mktemp("cluster")
    async with (
        throwaway_postgres("nginx") as database_url,
        server_processes(
            3, database_url, directory / "replicas", args=("--page-token-secret", SECRET)
        ) as replicas,
        running_nginx(directory / "nginx", [replica.address for replica in replicas]) as nginx,
    ):
        yield Cluster(database_url, replicas, nginx)


@pytest.fixture(scope="module")
async def through_nginx(cluster: Cluster) -> AsyncIterator[grpc.aio.Channel]:
    async with retrying_channel(cluster.nginx.address) as channel:
        yield channel


async def new_project(channel: grpc.aio.Channel, tasks: int) -> tuple[int, list[int]]:
    """A project with `tasks` tasks, created through `channel`; (project id, task ids)."""
    projects = project_service_pb2_grpc.ProjectServiceStub(channel)
    project = await projects.CreateProject(
        project_service_pb2.CreateProjectRequest(
            project=resources_pb2.Project(name=f"nginx-{uuid.uuid4().hex[:10]}"),
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


# --- the shipped file is what runs ------------------------------------------------------------


def test_the_tests_change_only_the_addresses_of_the_shipped_config() -> None:
    shipped = SHIPPED_SITE.read_text()
    rendered = render_site(shipped, listen="127.0.0.1:1", upstreams=["127.0.0.1:2", "[::1]:3"])
    addresses = re.compile(r"^\s+(listen|server) .*\n", re.M)
    assert addresses.sub("", rendered) == addresses.sub("", shipped)
    assert re.findall(r"^\s+(?:listen|server) (.*);$", rendered, re.M) == [
        "127.0.0.1:2 max_fails=0",
        "[::1]:3 max_fails=0",
        "127.0.0.1:1 http2",
    ]


# --- the config's answers of its own --------------------------------------------------------


@pytest.fixture(scope="module")
async def nginx_without_replicas(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Nginx]:
    """nginx whose upstreams are ports nothing listens on."""
    upstreams = [f"127.0.0.1:{port}" for port in free_ports(2)]
    async with running_nginx(tmp_path_factory.mktemp("lonely-nginx"), upstreams) as nginx:
        yield nginx


async def test_no_replica_answering_is_unavailable_not_an_html_page(
    nginx_without_replicas: Nginx,
) -> None:
    async with grpc.aio.insecure_channel(nginx_without_replicas.address) as channel:
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await projects.ListProjects(project_service_pb2.ListProjectsRequest(), timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == "no replica answered (nginx)"
    [request] = nginx_without_replicas.requests()
    assert request["upstream_status"] == "502, 502"  # both replicas tried, none answered
    assert request["own_grpc_status"] == "14"


async def test_a_request_above_nginx_default_body_limit_reaches_the_server(
    through_nginx: grpc.aio.Channel,
) -> None:
    """nginx's default client_max_body_size (1 MiB) would refuse it; the server takes 4 MiB."""
    project_id, _ = await new_project(through_nginx, tasks=0)
    tasks = task_service_pb2_grpc.TaskServiceStub(through_nginx)
    description = "x" * (2 << 20)
    created = await tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=project_id, title="big", description=description),
            request_id=str(uuid.uuid4()),
        )
    )
    fetched = await tasks.GetTask(task_service_pb2.GetTaskRequest(id=created.id))
    assert fetched.description == description


# --- balancing ------------------------------------------------------------------------------


async def test_calls_are_balanced_over_every_replica(
    cluster: Cluster, through_nginx: grpc.aio.Channel
) -> None:
    before = len(cluster.nginx.requests())
    health = health_pb2_grpc.HealthStub(through_nginx)
    for _ in range(30):
        response = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    served_by = Counter(entry["upstream"] for entry in cluster.nginx.requests()[before:])
    assert set(served_by) == {replica.address for replica in cluster.replicas}
    assert min(served_by.values()) >= 5, served_by


async def test_one_client_connection_carries_well_over_1000_calls(
    cluster: Cluster, through_nginx: grpc.aio.Channel
) -> None:
    """nginx's default keepalive_requests (1000) would end the connection with GOAWAY."""
    health = health_pb2_grpc.HealthStub(through_nginx)
    request = health_pb2.HealthCheckRequest()
    await health.Check(request, timeout=TIMEOUT)
    before = len(cluster.nginx.requests())
    for _ in range(60):  # 1,200 calls, 20 at a time
        await asyncio.gather(*(health.Check(request, timeout=TIMEOUT) for _ in range(20)))
    entries = cluster.nginx.requests()[before:]
    assert len(entries) == 1200
    assert {entry["connection"] for entry in entries} == {entries[0]["connection"]}
    assert max(int(entry["connection_requests"]) for entry in entries) > 1200


# --- tokens are not tied to a replica --------------------------------------------------------


async def test_page_and_resume_tokens_from_one_replica_work_on_every_other(
    cluster: Cluster, through_nginx: grpc.aio.Channel
) -> None:
    project_id, ids = await new_project(through_nginx, tasks=5)
    channels = [retrying_channel(replica.address) for replica in cluster.replicas]
    try:
        stubs = [task_service_pb2_grpc.TaskServiceStub(channel) for channel in channels]
        list_request = task_service_pb2.ListTasksRequest(
            project_id=project_id, page_size=2, order_by="create_time"
        )
        stream_request = task_service_pb2.StreamTasksRequest(project_id=project_id, batch_size=2)
        for issuer in stubs:
            first_page = await issuer.ListTasks(list_request, timeout=TIMEOUT)
            assert [task.id for task in first_page.tasks] == ids[:2]
            stream = issuer.StreamTasks(stream_request, timeout=TIMEOUT)
            first_batch = await stream.read()
            stream.cancel()
            assert isinstance(first_batch, task_service_pb2.StreamTasksResponse)
            assert [task.id for task in first_batch.tasks] == ids[:2]
            for other in stubs:
                list_request.page_token = first_page.next_page_token
                page = await other.ListTasks(list_request, timeout=TIMEOUT)
                list_request.page_token = ""
                assert [task.id for task in page.tasks] == ids[2:4]
                resumed = task_service_pb2.StreamTasksRequest(
                    project_id=project_id, batch_size=2, resume_token=first_batch.resume_token
                )
                rest = [
                    task.id
                    async for batch in other.StreamTasks(resumed, timeout=TIMEOUT)
                    for task in batch.tasks
                ]
                assert rest == ids[2:]
    finally:
        for channel in channels:
            await channel.close()

    # The control: a server with another secret refuses those tokens.
    stranger = await start_server(
        Settings(
            database_url=cluster.database_url,
            address="127.0.0.1:0",
            page_token_secret="not-the-replicas-secret",
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stranger.port}") as channel:
            list_request.page_token = first_page.next_page_token
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await task_service_pb2_grpc.TaskServiceStub(channel).ListTasks(
                    list_request, timeout=TIMEOUT
                )
    finally:
        await stranger.stop(grace=0)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- a replica crashes under mixed load ------------------------------------------------------


def stream_was_cut(error: grpc.aio.AioRpcError) -> bool:
    """A stream broken by its replica's death: UNAVAILABLE, or nginx's reset of it.

    When a replica dies after its response began, nginx can no longer answer a status and
    resets the client's stream (RST_STREAM INTERNAL_ERROR), which gRPC reports as INTERNAL.
    """
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code() == grpc.StatusCode.INTERNAL and "RST_STREAM" in (error.details() or "")


@dataclass
class Load:
    """Mixed traffic through one channel with the retry policy, and what came of it."""

    channel: grpc.aio.Channel
    project_id: int  # seeded tasks only: lists and streams know what to expect
    seeded: list[int]
    creates_project_id: int
    calls: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    update_failures: Counter[str] = field(default_factory=Counter)
    created: dict[str, int] = field(default_factory=dict)  # request_id -> task id
    stream_resumes: Counter[str] = field(default_factory=Counter)
    turns: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def tasks(self) -> task_service_pb2_grpc.TaskServiceStub:
        return task_service_pb2_grpc.TaskServiceStub(self.channel)

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
                async for batch in self.tasks.StreamTasks(request, timeout=TIMEOUT):
                    seen.extend(task.id for task in batch.tasks)
                    request.resume_token = batch.resume_token
                break
            except grpc.aio.AioRpcError as error:
                # The retry policy cannot replay a stream that already delivered data;
                # the resume token lets the client go on from there (README: Streams).
                if not (request.resume_token and stream_was_cut(error)):
                    raise
                self.stream_resumes[f"{error.code().name}: {error.details()}"] += 1
        assert seen == self.seeded

    async def update(self) -> None:
        """Not idempotent, so not retried: its failures are counted, not hidden."""
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

    async def run_worker(self, worker: int, stop: asyncio.Event) -> None:
        operations: list[Callable[[], Awaitable[None]]] = [
            self.create,
            self.get,
            self.list,
            self.stream,
            self.create,
            self.get,
            self.update,
        ]
        turn = 0
        while not stop.is_set():
            operation = operations[(worker + turn) % len(operations)]
            self.calls[operation.__name__] += 1
            try:
                await operation()
            except grpc.aio.AioRpcError as error:
                self.failures.append((operation.__name__, error.code().name, error.details()))
            turn += 1


async def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


async def test_sigkill_of_a_replica_under_load_fails_no_idempotent_call(
    cluster: Cluster, through_nginx: grpc.aio.Channel
) -> None:
    project_id, seeded = await new_project(through_nginx, tasks=20)
    creates_project_id, _ = await new_project(through_nginx, tasks=0)
    load = Load(through_nginx, project_id, seeded, creates_project_id)
    victim = cluster.replicas[1]
    before = len(cluster.nginx.requests())
    stop = asyncio.Event()
    workers = [asyncio.create_task(load.run_worker(n, stop)) for n in range(24)]
    try:
        await _until(lambda: sum(load.calls.values()) >= 150, "the load is under way")
        await victim.kill()
        killed_at = sum(load.calls.values())
        await _until(lambda: sum(load.calls.values()) >= killed_at + 300, "load on two replicas")
        await victim.start()  # back on its port: nginx sends it calls again
        restarted_at = sum(load.calls.values())
        await _until(lambda: sum(load.calls.values()) >= restarted_at + 150, "load on three")
    finally:
        stop.set()
        await asyncio.gather(*workers)

    entries = cluster.nginx.requests()[before:]
    unavailable_answers = sum(1 for entry in entries if entry["own_grpc_status"] == "14")
    figures = {
        "calls": dict(load.calls),
        "creates": len(load.created),
        "failed": len(load.failures),
        "nginx_unavailable_answers": unavailable_answers,
        "stream_resumes": dict(load.stream_resumes),
        "update_failures": dict(load.update_failures),
    }
    log.info("SIGKILL of one replica under load: %s", figures)
    assert load.failures == [], figures
    # The crash did hit calls in flight: nginx answered them UNAVAILABLE and the policy
    # retried them on another replica.
    assert unavailable_answers > 0, figures
    # A non-retried write may fail, but only as UNAVAILABLE (the caller re-reads and decides).
    assert set(load.update_failures) <= {"UNAVAILABLE"}, figures
    served_by = Counter(entry["upstream"].split(", ")[-1] for entry in entries)
    assert served_by[victim.address] > 0, "the restarted replica never served again"

    # No retried create made a second task: one row per request_id, the id it answered.
    connection = await asyncpg.connect(asyncpg_dsn(cluster.database_url), timeout=TIMEOUT)
    try:
        rows = await connection.fetch(
            "SELECT title, id FROM tasks WHERE project_id = $1",
            creates_project_id,
        )
    finally:
        await connection.close()
    stored = Counter(row["title"] for row in rows)
    assert [title for title, count in stored.items() if count > 1] == []
    assert {row["title"].removeprefix("load "): row["id"] for row in rows} == load.created
