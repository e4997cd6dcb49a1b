"""Real nginx (deploy/nginx/taskservice.conf) in front of three server processes on one database.

Clients use the published retry policy (protos/taskmanager/v1/service_config.json). The
replicas are separate processes so that a SIGKILL is a real crash.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
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
from tests.infra.cluster import Cluster, balanced_cluster
from tests.infra.mixed_load import MixedLoad, new_project, stored_creates
from tests.infra.nginx import SHIPPED_SITE, Nginx, render_site, running_nginx
from tests.infra.processes import free_ports

log = logging.getLogger(__name__)
TIMEOUT = 30.0


def tag() -> tuple[str, tuple[tuple[str, str]]]:
    """A fresh tag and the call metadata carrying it (nginx logs it: see tests/infra/nginx.py)."""
    value = uuid.uuid4().hex
    return value, (("x-test-tag", value),)


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with balanced_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
async def through_nginx(cluster: Cluster) -> AsyncIterator[grpc.aio.Channel]:
    async with retrying_channel(cluster.nginx.address) as channel:
        yield channel


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
    name, metadata = tag()
    async with grpc.aio.insecure_channel(nginx_without_replicas.address) as channel:
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await projects.ListProjects(
                project_service_pb2.ListProjectsRequest(), timeout=TIMEOUT, metadata=metadata
            )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == "no replica answered (nginx)"
    [request] = await nginx_without_replicas.logged(name, 1)
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
    name, metadata = tag()
    health = health_pb2_grpc.HealthStub(through_nginx)
    for _ in range(30):
        response = await health.Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT, metadata=metadata
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    served_by = Counter(entry["upstream"] for entry in await cluster.nginx.logged(name, 30))
    assert set(served_by) == {replica.address for replica in cluster.replicas}
    assert min(served_by.values()) >= 5, served_by


async def test_one_client_connection_carries_well_over_1000_calls(
    cluster: Cluster, through_nginx: grpc.aio.Channel
) -> None:
    """nginx's default keepalive_requests (1000) would end the connection with GOAWAY."""
    name, metadata = tag()
    health = health_pb2_grpc.HealthStub(through_nginx)
    request = health_pb2.HealthCheckRequest()
    for _ in range(60):  # 1,200 calls, 20 at a time
        await asyncio.gather(
            *(health.Check(request, timeout=TIMEOUT, metadata=metadata) for _ in range(20))
        )
    entries = await cluster.nginx.logged(name, 1200)
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


async def test_sigkill_of_a_replica_under_load_fails_no_idempotent_call(
    cluster: Cluster, through_nginx: grpc.aio.Channel
) -> None:
    load = await MixedLoad.prepare(through_nginx)
    victim = cluster.replicas[1]
    before = len(cluster.nginx.requests())
    async with load.running(callers=24):
        await load.wait_for_calls(150)
        await victim.kill()
        await load.wait_for_calls(300)  # on two replicas
        await victim.start()  # back on its port: nginx sends it calls again
        await load.wait_for_calls(150)

    entries = cluster.nginx.requests()[before:]
    figures = load.figures()
    figures["nginx_unavailable_answers"] = sum(e["own_grpc_status"] == "14" for e in entries)
    log.info("SIGKILL of one replica under load: %s", figures)
    assert load.failures == [], figures
    # The crash did hit calls in flight: nginx answered them UNAVAILABLE and the policy
    # retried them on another replica.
    assert figures["nginx_unavailable_answers"], figures
    # A non-retried write may fail, but only as UNAVAILABLE (the caller re-reads and decides).
    assert set(load.update_failures) <= {"UNAVAILABLE"}, figures
    served_by = Counter(entry["upstream"].split(", ")[-1] for entry in entries)
    assert served_by[victim.address] > 0, "the restarted replica never served again"

    # No retried create made a second task: one row per request_id, the id it answered.
    stored = await stored_creates(cluster.database_url, load)
    assert len(stored) == len(load.created)
    assert dict(stored) == load.created
