"""Security: TLS and mTLS, bearer tokens and the read-only role, message limits, warnings."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.runtime.auth import load_tokens
from service.runtime.server import TaskServer, start_server
from service.runtime.transport import server_credentials, server_options
from service.settings import Settings
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from tests.certificates import CertificateAuthority, Issued
from tests.conftest import create_task, unique
from tests.rpc_errors import expect_failure

TIMEOUT = 20.0  # bound on every call; nothing here waits a fixed time
MiB = 1024 * 1024
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
TOKENS = {"writer-secret": "alice", "reader-secret": "bob"}
Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    """Request metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


WRITER = bearer("writer-secret")
READER = bearer("reader-secret")


@asynccontextmanager
async def running(database_url: str, **settings: Any) -> AsyncIterator[TaskServer]:
    """A server of this test's own on an ephemeral loopback port (unless told otherwise)."""
    settings.setdefault("address", "127.0.0.1:0")
    server = await start_server(Settings(database_url=database_url, **settings))
    try:
        yield server
    finally:
        await server.stop(0)


@dataclass
class Stubs:
    """Every stub a test needs, on one channel."""

    tasks: task_service_pb2_grpc.TaskServiceStub
    projects: project_service_pb2_grpc.ProjectServiceStub
    workers: worker_service_pb2_grpc.WorkerServiceStub
    health: health_pb2_grpc.HealthStub

    @classmethod
    def on(cls, channel: grpc.aio.Channel) -> Stubs:
        return cls(
            task_service_pb2_grpc.TaskServiceStub(channel),
            project_service_pb2_grpc.ProjectServiceStub(channel),
            worker_service_pb2_grpc.WorkerServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
        )


async def check_health(stubs: Stubs) -> int:
    response = await stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    return int(response.status)


async def drain(call: Any) -> list[Any]:
    """Every message of a server stream (a stream call is not awaitable by itself)."""
    return [message async for message in call]


async def new_project(stubs: Stubs, metadata: Metadata) -> resources_pb2.Project:
    request = project_service_pb2.CreateProjectRequest(
        project=resources_pb2.Project(name=unique("project"))
    )
    project: resources_pb2.Project = await stubs.projects.CreateProject(
        request, metadata=metadata, timeout=TIMEOUT
    )
    return project


# --- TLS and mTLS ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate it issued, a good client and one from another CA."""

    ca: CertificateAuthority
    ca_file: Path
    server_files: tuple[Path, Path]
    client: Issued
    stranger: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("TaskService test CA")
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.pem)
    other_ca = CertificateAuthority.create("Someone else's CA")
    return Pki(
        ca=ca,
        ca_file=ca_file,
        server_files=ca.issue_server().write(directory, "server"),
        client=ca.issue_client("billing"),
        stranger=other_ca.issue_client("billing"),
    )


def tls_settings(pki: Pki, *, mutual: bool = False) -> dict[str, Any]:
    cert, key = pki.server_files
    return {"tls_cert": cert, "tls_key": key, "tls_client_ca": pki.ca_file if mutual else None}


def tls_channel(
    port: int, pki: Pki, client: Issued | None = None, token: str | None = None
) -> grpc.aio.Channel:
    """A channel trusting the test CA, optionally with a client certificate and a token."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.pem,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def test_tls_client_trusting_the_ca_is_served(database_url: str, pki: Pki) -> None:
    async with running(database_url, **tls_settings(pki)) as server:
        async with tls_channel(server.port, pki) as channel:
            stubs = Stubs.on(channel)
            assert await check_health(stubs) == health_pb2.HealthCheckResponse.SERVING
            assert (await new_project(stubs, ())).id > 0


async def test_tls_server_refuses_a_plaintext_client(database_url: str, pki: Pki) -> None:
    async with running(database_url, **tls_settings(pki)) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await check_health(Stubs.on(channel))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_mtls_refuses_a_client_without_a_certificate_of_the_ca(
    database_url: str, pki: Pki, client: str
) -> None:
    certificate = pki.stranger if client == "stranger" else None
    async with running(database_url, **tls_settings(pki, mutual=True)) as server:
        async with tls_channel(server.port, pki, certificate) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await check_health(Stubs.on(channel))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_serves_a_client_certificate_of_the_ca(database_url: str, pki: Pki) -> None:
    async with running(database_url, **tls_settings(pki, mutual=True)) as server:
        async with tls_channel(server.port, pki, pki.client) as channel:
            stubs = Stubs.on(channel)
            assert await check_health(stubs) == health_pb2.HealthCheckResponse.SERVING
            assert (await new_project(stubs, ())).id > 0


async def test_tls_with_access_token_call_credentials_authenticates(
    database_url: str, pki: Pki
) -> None:
    """The stock gRPC client way: TLS channel credentials composed with a bearer token."""
    settings = {**tls_settings(pki), "auth_tokens": TOKENS}
    async with running(database_url, **settings) as server:
        async with tls_channel(server.port, pki, token="writer-secret") as channel:
            assert (await new_project(Stubs.on(channel), ())).id > 0
        async with tls_channel(server.port, pki) as anonymous:
            await expect_failure(new_project(Stubs.on(anonymous), ()), UNAUTHENTICATED)


@pytest.mark.parametrize(
    "given", [{"tls_cert"}, {"tls_key"}, {"tls_client_ca"}, {"tls_cert", "tls_client_ca"}]
)
def test_incomplete_tls_settings_are_refused(pki: Pki, given: set[str]) -> None:
    complete = tls_settings(pki, mutual=True)
    with pytest.raises(ValueError, match="tls_"):
        server_credentials(Settings(**{name: complete[name] for name in given}))


# --- plaintext warning ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "tls", "warned"),
    [
        ("0.0.0.0:0", False, True),
        ("127.0.0.1:0", False, False),
        ("localhost:0", False, False),
        ("0.0.0.0:0", True, False),
    ],
)
async def test_plaintext_on_a_non_loopback_address_is_warned_about(
    database_url: str,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    address: str,
    tls: bool,
    warned: bool,
) -> None:
    settings = tls_settings(pki) if tls else {}
    with caplog.at_level(logging.WARNING, logger="service.runtime.transport"):
        async with running(database_url, address=address, **settings):
            pass
    warnings = [r for r in caplog.records if "PLAINTEXT" in r.getMessage()]
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].levelno == logging.WARNING
        assert address in warnings[0].getMessage()


# --- authentication and the read-only role ------------------------------------------------


@pytest.fixture(scope="module")
async def auth_server(database_url: str) -> AsyncIterator[TaskServer]:
    """A server with tokens for alice (writer) and bob (read-only)."""
    async with running(database_url, auth_tokens=TOKENS, read_only_principals=["bob"]) as server:
        yield server


@pytest.fixture(scope="module")
async def auth_stubs(auth_server: TaskServer) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        yield Stubs.on(channel)


@pytest.fixture
async def owned_task(auth_stubs: Stubs) -> resources_pb2.Task:
    """A task (in a project of its own) created by the writer."""
    project = await new_project(auth_stubs, WRITER)
    request = task_service_pb2.CreateTaskRequest(
        task=resources_pb2.Task(project_id=project.id, title=unique("task"))
    )
    task: resources_pb2.Task = await auth_stubs.tasks.CreateTask(
        request, metadata=WRITER, timeout=TIMEOUT
    )
    return task


Call = Callable[[Stubs, resources_pb2.Task, Metadata], Awaitable[Any]]

READS: dict[str, Call] = {
    "GetTask": lambda s, t, md: s.tasks.GetTask(
        task_service_pb2.GetTaskRequest(id=t.id), metadata=md, timeout=TIMEOUT
    ),
    "ListTasks": lambda s, t, md: s.tasks.ListTasks(
        task_service_pb2.ListTasksRequest(project_id=t.project_id), metadata=md, timeout=TIMEOUT
    ),
    "StreamTasks": lambda s, t, md: drain(
        s.tasks.StreamTasks(
            task_service_pb2.StreamTasksRequest(project_id=t.project_id),
            metadata=md,
            timeout=TIMEOUT,
        )
    ),
    "BatchGetTasks": lambda s, t, md: s.tasks.BatchGetTasks(
        task_service_pb2.BatchGetTasksRequest(ids=[t.id]), metadata=md, timeout=TIMEOUT
    ),
    "ListTaskEvents": lambda s, t, md: s.tasks.ListTaskEvents(
        task_service_pb2.ListTaskEventsRequest(task_id=t.id), metadata=md, timeout=TIMEOUT
    ),
    "GetProject": lambda s, t, md: s.projects.GetProject(
        project_service_pb2.GetProjectRequest(id=t.project_id), metadata=md, timeout=TIMEOUT
    ),
    "ListProjects": lambda s, _t, md: s.projects.ListProjects(
        project_service_pb2.ListProjectsRequest(), metadata=md, timeout=TIMEOUT
    ),
    "ListWorkers": lambda s, _t, md: s.workers.ListWorkers(
        worker_service_pb2.ListWorkersRequest(), metadata=md, timeout=TIMEOUT
    ),
    "ListProjectEvents": lambda s, t, md: s.projects.ListProjectEvents(
        project_service_pb2.ListProjectEventsRequest(project_id=t.project_id),
        metadata=md,
        timeout=TIMEOUT,
    ),
}

WRITES: dict[str, Call] = {
    "CreateTask": lambda s, t, md: s.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            task=resources_pb2.Task(project_id=t.project_id, title=unique("task"))
        ),
        metadata=md,
        timeout=TIMEOUT,
    ),
    "UpdateTask": lambda s, t, md: s.tasks.UpdateTask(
        task_service_pb2.UpdateTaskRequest(
            task=resources_pb2.Task(id=t.id, title="renamed"),
            update_mask=FieldMask(paths=["title"]),
        ),
        metadata=md,
        timeout=TIMEOUT,
    ),
    "DeleteTask": lambda s, t, md: s.tasks.DeleteTask(
        task_service_pb2.DeleteTaskRequest(id=t.id), metadata=md, timeout=TIMEOUT
    ),
    "UndeleteTask": lambda s, t, md: s.tasks.UndeleteTask(
        task_service_pb2.UndeleteTaskRequest(id=t.id), metadata=md, timeout=TIMEOUT
    ),
    "BatchCreateTasks": lambda s, t, md: s.tasks.BatchCreateTasks(
        task_service_pb2.BatchCreateTasksRequest(
            requests=[
                task_service_pb2.CreateTaskRequest(
                    task=resources_pb2.Task(project_id=t.project_id, title=unique("task"))
                )
            ]
        ),
        metadata=md,
        timeout=TIMEOUT,
    ),
    "CreateProject": lambda s, _t, md: new_project(s, md),
    "DeleteProject": lambda s, t, md: s.projects.DeleteProject(
        project_service_pb2.DeleteProjectRequest(id=t.project_id), metadata=md, timeout=TIMEOUT
    ),
    "CreateWorker": lambda s, _t, md: s.workers.CreateWorker(
        worker_service_pb2.CreateWorkerRequest(
            worker=resources_pb2.Worker(name="Eve", email=f"{unique('eve')}@example.com")
        ),
        metadata=md,
        timeout=TIMEOUT,
    ),
}


@pytest.mark.parametrize("rpc", ["GetTask", "StreamTasks", "CreateTask", "DeleteProject"])
async def test_rpc_without_token_is_unauthenticated(
    auth_stubs: Stubs, owned_task: resources_pb2.Task, rpc: str
) -> None:
    call = {**READS, **WRITES}[rpc]
    failure = await expect_failure(call(auth_stubs, owned_task, ()), UNAUTHENTICATED)
    assert failure.info.reason == "UNAUTHENTICATED"
    assert "Bearer" in failure.message


@pytest.mark.parametrize(
    "metadata",
    [
        bearer("no-such-token"),
        bearer("writer-secre"),  # a prefix of a real token
        bearer("writer-secret-and-more"),
        (("authorization", "writer-secret"),),  # no scheme
        (("authorization", "Basic writer-secret"),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer writer-secret extra"),),
        (*WRITER, *READER),  # two credentials: ambiguous
        (("x-actor", "alice"),),  # the unverified audit name is no credential
    ],
    ids=lambda metadata: repr(metadata)[:60],
)
async def test_rpc_with_invalid_credentials_is_unauthenticated(
    auth_stubs: Stubs, owned_task: resources_pb2.Task, metadata: Metadata
) -> None:
    for call in (READS["GetTask"], READS["StreamTasks"], WRITES["CreateTask"]):
        failure = await expect_failure(call(auth_stubs, owned_task, metadata), UNAUTHENTICATED)
        assert failure.info.reason == "UNAUTHENTICATED"
        assert "secret" not in failure.message


async def test_bearer_scheme_is_case_insensitive(
    auth_stubs: Stubs, owned_task: resources_pb2.Task
) -> None:
    metadata = (("authorization", "bearer writer-secret"),)
    task = await READS["GetTask"](auth_stubs, owned_task, metadata)
    assert task.id == owned_task.id


async def test_health_check_needs_no_token(auth_stubs: Stubs) -> None:
    assert await check_health(auth_stubs) == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_needs_no_token(auth_server: TaskServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = await drain(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
    names = {service.name for service in responses[0].list_services_response.service}
    assert "taskmanager.v1.TaskService" in names


@pytest.mark.parametrize("rpc", sorted(READS))
async def test_read_only_principal_can_read(
    auth_stubs: Stubs, owned_task: resources_pb2.Task, rpc: str
) -> None:
    assert await READS[rpc](auth_stubs, owned_task, READER) is not None


@pytest.mark.parametrize("rpc", sorted(WRITES))
async def test_read_only_principal_write_is_permission_denied(
    auth_stubs: Stubs, owned_task: resources_pb2.Task, rpc: str
) -> None:
    failure = await expect_failure(WRITES[rpc](auth_stubs, owned_task, READER), PERMISSION_DENIED)
    assert failure.info.reason == "PERMISSION_DENIED"
    assert dict(failure.info.metadata) == {"principal": "bob", "method": rpc}
    unchanged = await READS["GetTask"](auth_stubs, owned_task, WRITER)
    assert unchanged.etag == owned_task.etag


def _rpc_log_fields(caplog: pytest.LogCaptureFixture, code: str) -> list[dict[str, Any]]:
    return [
        record.fields  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == "service.runtime.observability"
        and getattr(record, "fields", {}).get("code") == code
    ]


async def test_refused_write_is_logged_with_its_principal(
    auth_stubs: Stubs, owned_task: resources_pb2.Task, caplog: pytest.LogCaptureFixture
) -> None:
    spoofing = (*READER, ("x-actor", "mallory"))
    with caplog.at_level(logging.INFO, logger="service.runtime.observability"):
        await expect_failure(
            WRITES["UpdateTask"](auth_stubs, owned_task, spoofing), PERMISSION_DENIED
        )
    [line] = _rpc_log_fields(caplog, "PERMISSION_DENIED")
    assert line["principal"] == "bob"
    assert line["method"] == "/taskmanager.v1.TaskService/UpdateTask"


async def test_unauthenticated_call_is_logged_as_anonymous_whatever_it_claims(
    auth_stubs: Stubs, owned_task: resources_pb2.Task, caplog: pytest.LogCaptureFixture
) -> None:
    claiming = (("x-actor", "alice"),)
    with caplog.at_level(logging.INFO, logger="service.runtime.observability"):
        await expect_failure(READS["GetTask"](auth_stubs, owned_task, claiming), UNAUTHENTICATED)
    [line] = _rpc_log_fields(caplog, "UNAUTHENTICATED")
    assert line["principal"] == "anonymous"


async def test_writes_are_audited_as_the_principal_not_x_actor(
    auth_stubs: Stubs, owned_task: resources_pb2.Task
) -> None:
    spoofing = (*WRITER, ("x-actor", "mallory"))
    await WRITES["UpdateTask"](auth_stubs, owned_task, spoofing)
    await WRITES["DeleteTask"](auth_stubs, owned_task, spoofing)
    events = await READS["ListTaskEvents"](auth_stubs, owned_task, READER)
    assert [(e.action, e.actor) for e in events.events] == [
        ("create", "alice"),
        ("update", "alice"),
        ("delete", "alice"),
    ]


# --- where tokens come from -----------------------------------------------------------------


async def test_tokens_from_a_file_authenticate(database_url: str, tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps({"file-secret": "carol"}))
    async with running(database_url, auth_tokens_file=tokens_file) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stubs = Stubs.on(channel)
            project = await new_project(stubs, bearer("file-secret"))
            task = await create_task_as(stubs, project.id, bearer("file-secret"))
            events = await READS["ListTaskEvents"](stubs, task, bearer("file-secret"))
            assert [e.actor for e in events.events] == ["carol"]
            await expect_failure(new_project(stubs, bearer("writer-secret")), UNAUTHENTICATED)


async def test_tokens_from_the_environment_authenticate(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKSERVICE_AUTH_TOKENS", '{"tok":"alice"}')
    async with running(database_url) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stubs = Stubs.on(channel)
            assert (await new_project(stubs, bearer("tok"))).id > 0
            await expect_failure(new_project(stubs, ()), UNAUTHENTICATED)


async def create_task_as(stubs: Stubs, project_id: int, metadata: Metadata) -> resources_pb2.Task:
    request = task_service_pb2.CreateTaskRequest(
        task=resources_pb2.Task(project_id=project_id, title=unique("task"))
    )
    task: resources_pb2.Task = await stubs.tasks.CreateTask(
        request, metadata=metadata, timeout=TIMEOUT
    )
    return task


def test_file_and_environment_tokens_are_merged(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text('{"a-secret": "alice"}')
    settings = Settings(auth_tokens_file=tokens_file, auth_tokens={"b-secret": "bob"})
    assert load_tokens(settings) == {"a-secret": "alice", "b-secret": "bob"}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{}", "no tokens"),  # configured but empty: fail closed, never silently open
        ("not json", "not valid JSON"),
        ('["a-secret"]', "JSON object"),
        ('{"a-secret": 1}', "JSON object"),
        ('{"two words": "alice"}', "not printable"),
        ('{"a-secret": " "}', "principal"),
        ('{"b-secret": "mallory"}', "another principal"),
    ],
)
def test_malformed_token_configuration_is_refused(
    tmp_path: Path, content: str, problem: str
) -> None:
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(content)
    settings = Settings(auth_tokens_file=tokens_file, auth_tokens={"b-secret": "bob"})
    with pytest.raises(ValueError, match=problem) as raised:
        load_tokens(settings)
    assert "two words" not in str(raised.value)  # a token is a secret, never echoed


# --- limits -----------------------------------------------------------------------------------


async def test_create_task_over_the_default_size_limit_is_resource_exhausted(
    tasks: task_service_pb2_grpc.TaskServiceStub, project: resources_pb2.Project
) -> None:
    request = task_service_pb2.CreateTaskRequest(
        task=resources_pb2.Task(project_id=project.id, title="big", description="x" * (5 * MiB))
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tasks.CreateTask(request, timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The connection survives: the same channel serves the next call.
    assert (await create_task(tasks, project.id)).project_id == project.id


async def test_configured_receive_limit_is_enforced(database_url: str) -> None:
    async with running(database_url, max_receive_message_bytes=64 * 1024) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stubs = Stubs.on(channel)
            project = await new_project(stubs, ())
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await create_task(stubs.tasks, project.id, description="x" * (100 * 1024))
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await create_task(stubs.tasks, project.id, description="x" * 1024)).id > 0


def test_server_options_carry_the_configured_limits() -> None:
    settings = Settings(
        max_receive_message_bytes=MiB,
        max_concurrent_streams=7,
        keepalive_time_s=30,
        keepalive_timeout_s=5,
        min_client_ping_interval_s=10,
    )
    options = dict(server_options(settings))
    assert options["grpc.max_receive_message_length"] == MiB
    assert options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
