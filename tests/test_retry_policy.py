"""The published client service config: what it retries, and that it works end to end."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor

from service.runtime.auth import READ_PREFIXES  # the one definition of "only reads"
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
)
from tests.infra.clients import SERVICE_CONFIG, retrying_channel
from tests.infra.processes import free_port
from tests.infra.service_process import ServiceProcess

SERVICES = {
    service.full_name: service
    for module in (project_service_pb2, task_service_pb2, worker_service_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
}
TIMEOUT = 30.0


def method_configs() -> list[dict[str, Any]]:
    configs: list[dict[str, Any]] = json.loads(SERVICE_CONFIG.read_text())["methodConfig"]
    return configs


def configured_methods() -> list[tuple[descriptor.MethodDescriptor, dict[str, Any]]]:
    """(method, its methodConfig) for every name in the config; unknown names fail."""
    found = []
    for config in method_configs():
        for name in config["name"]:
            service = SERVICES.get(name["service"])
            assert service is not None, f"no service {name['service']} in the protos"
            method = service.methods_by_name.get(name["method"])
            assert method is not None, f"no method {name['service']}/{name['method']}"
            found.append((method, config))
    return found


def carries_request_id(method: descriptor.MethodDescriptor) -> bool:
    return "request_id" in method.input_type.fields_by_name


# --- the config cannot rot -------------------------------------------------------------


def test_every_name_in_the_config_is_a_method_of_the_services() -> None:
    assert configured_methods()


def test_every_method_is_configured_exactly_once() -> None:
    """A new RPC must be classified (retried or not) before the config is complete."""
    named = Counter(method.full_name for method, _ in configured_methods())
    every = {method.full_name for service in SERVICES.values() for method in service.methods}
    assert set(named) == every
    assert [name for name, count in named.items() if count > 1] == []


def test_only_reads_and_creates_with_a_request_id_are_retried() -> None:
    for method, config in configured_methods():
        safe = method.name.startswith(READ_PREFIXES) or carries_request_id(method)
        assert ("retryPolicy" in config) == safe, method.full_name


def test_only_unavailable_is_retried_with_bounded_backoff() -> None:
    """AIP-194: never INVALID_ARGUMENT, DEADLINE_EXCEEDED, CANCELLED; gRPC caps attempts at 5."""
    for config in method_configs():
        policy = config.get("retryPolicy")
        if policy is None:
            continue
        assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert 2 <= policy["maxAttempts"] <= 5
        assert policy["initialBackoff"] <= policy["maxBackoff"]
        assert config["waitForReady"] is True


def test_unary_calls_get_a_default_deadline_and_streams_do_not() -> None:
    for method, config in configured_methods():
        assert ("timeout" in config) != method.server_streaming, method.full_name


# --- end to end: a server killed and restarted under a client with the config -----------------


@pytest.fixture
async def server_process(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    flags = ("--database-url", f"sqlite+aiosqlite:///{tmp_path / 'retry.db'}", "--migrate")
    # A fixed port: the restarted server must be where the client's channel reconnects.
    server = ServiceProcess(flags, port=free_port(), log_path=tmp_path / "server.log")
    await server.start()
    yield server
    await server.close()


class Traffic:
    """Creates (each with a request_id), gets and lists on one channel, until stopped."""

    def __init__(self, channel: grpc.aio.Channel, project_id: int) -> None:
        self.tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        self.project_id = project_id
        self.created: dict[str, int] = {}
        self.failures: list[str] = []
        self.calls = 0

    async def run(self, stop: asyncio.Event) -> None:
        for turn in itertools.count():
            if stop.is_set():
                return
            self.calls += 1
            try:
                await self.step(turn)
            except grpc.aio.AioRpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")

    async def step(self, turn: int) -> None:
        if turn % 3 == 0 or not self.created:
            request_id = str(uuid.uuid4())
            task = await self.tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    task=resources_pb2.Task(project_id=self.project_id, title=request_id),
                    request_id=request_id,
                )
            )
            self.created[request_id] = task.id
        elif turn % 3 == 1:
            task_id = list(self.created.values())[turn % len(self.created)]
            await self.tasks.GetTask(task_service_pb2.GetTaskRequest(id=task_id))
        else:
            await self.tasks.ListTasks(
                task_service_pb2.ListTasksRequest(project_id=self.project_id, page_size=5)
            )


async def test_calls_ride_out_a_server_kill_and_restart(
    server_process: ServiceProcess, tmp_path: Path
) -> None:
    async with retrying_channel(server_process.address) as channel:
        project = await project_service_pb2_grpc.ProjectServiceStub(channel).CreateProject(
            project_service_pb2.CreateProjectRequest(
                project=resources_pb2.Project(name="retries"), request_id=str(uuid.uuid4())
            )
        )
        traffic = [Traffic(channel, project.id) for _ in range(8)]
        stop = asyncio.Event()
        running = [asyncio.create_task(client.run(stop)) for client in traffic]
        try:
            await asyncio.sleep(0)  # the clients' first calls are on their way
            while sum(client.calls for client in traffic) < 80:
                await asyncio.sleep(0.01)
            await server_process.kill()
            # The control: a client without the config fails at once while the server is down.
            async with grpc.aio.insecure_channel(server_process.address) as plain:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await task_service_pb2_grpc.TaskServiceStub(plain).GetTask(
                        task_service_pb2.GetTaskRequest(id=1), timeout=TIMEOUT
                    )
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            await server_process.start()
            restarted = sum(client.calls for client in traffic)
            while sum(client.calls for client in traffic) < restarted + 80:
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.gather(*running)

    assert [failure for client in traffic for failure in client.failures] == []
    created = {key: value for client in traffic for key, value in client.created.items()}
    with sqlite3.connect(tmp_path / "retry.db") as db:
        rows = db.execute("SELECT title, id FROM tasks WHERE project_id = ?", (project.id,))
        stored = rows.fetchall()
    # Creates in flight at the kill were retried: still exactly one task per request_id.
    assert len(stored) == len(created)
    assert dict(stored) == created
