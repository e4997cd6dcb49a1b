"""The example clients (examples/node, examples/python) against a live server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import google.api
import grpc
import pytest

from service.runtime.server import TaskServer, start_server
from service.settings import Settings
from taskmanager.v1 import task_service_pb2, task_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
NODE_EXAMPLE = ROOT / "examples" / "node"
PYTHON_EXAMPLE = ROOT / "examples" / "python" / "client.py"
# google/api/*.proto ship inside the googleapis-common-protos package.
GOOGLEAPIS_PROTOS = Path(google.api.__path__[0]).parent.parent
CLIENT_TIMEOUT_S = 60


@pytest.fixture(scope="module")
async def live_server(database_url: str) -> AsyncIterator[TaskServer]:
    """A server of this module's own, on an ephemeral loopback port."""
    running = await start_server(Settings(database_url=database_url, address="127.0.0.1:0"))
    yield running
    await running.stop(grace=1)


def client_env(**extra: str) -> dict[str, str]:
    """The environment of a client process, without server settings of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVICE_")}
    env.update(extra)
    return env


async def run_client(command: Sequence[str], env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Run a client to completion (the server keeps serving on this loop) → (stdout, RESULT)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.communicate()
        pytest.fail(f"{command[0]} client did not finish in {CLIENT_TIMEOUT_S}s")
    output = stdout.decode()
    assert process.returncode == 0, f"client failed:\n{output}\n{stderr.decode()}"
    result_lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert len(result_lines) == 1, output
    return output, json.loads(result_lines[0].removeprefix("RESULT "))


async def check_result(server: TaskServer, output: str, result: dict[str, Any]) -> None:
    """What every example does: 5 tasks created, listed in 3 pages, streamed in 3 batches."""
    created = [int(task_id) for task_id in result["created"]]
    assert len(created) == 5
    assert len(set(created)) == 5
    assert created == sorted(created)
    # ListTasks ordered by create_time, two per page: every task once, in creation order.
    assert [int(task_id) for task_id in result["listed"]] == created
    assert result["pages"] == 3
    # StreamTasks in batches of two (default order create_time).
    assert [int(task_id) for task_id in result["streamed"]] == created
    assert result["batches"] == 3
    assert f"created project {result['projectId']}" in output
    # And the server agrees: the tasks are really stored under that project.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        page = await stub.ListTasks(
            task_service_pb2.ListTasksRequest(project_id=int(result["projectId"]), page_size=50)
        )
    assert sorted(task.id for task in page.tasks) == created


async def test_node_client(live_server: TaskServer) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    if not (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("examples/node has no node_modules: run `make examples-node` (npm ci)")
    output, result = await run_client(
        [node, str(NODE_EXAMPLE / "client.js"), f"127.0.0.1:{live_server.port}"],
        client_env(GOOGLEAPIS_PROTOS=str(GOOGLEAPIS_PROTOS)),
    )
    await check_result(live_server, output, result)
    # proto-loader options: int64 as decimal strings, enums by name.
    assert all(isinstance(task_id, str) for task_id in result["created"])
    assert "TASK_STATUS_PENDING" in output


async def test_python_client(live_server: TaskServer) -> None:
    pythonpath = os.pathsep.join(
        filter(None, [str(ROOT / "generated"), os.environ.get("PYTHONPATH")])
    )
    output, result = await run_client(
        [sys.executable, str(PYTHON_EXAMPLE), f"127.0.0.1:{live_server.port}"],
        client_env(PYTHONPATH=pythonpath),
    )
    await check_result(live_server, output, result)
