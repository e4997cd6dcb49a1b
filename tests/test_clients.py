"""The example clients (examples/node, examples/python) against a live server.

Both load protos/ only (googleapis' file is vendored there) and the published service
config (retry policy, wait for ready), and send a request_id on every create.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.runtime.server import TaskServer, start_server
from service.settings import Settings
from taskmanager.v1 import task_service_pb2, task_service_pb2_grpc
from tests.infra.processes import free_port
from tests.infra.service_process import ROOT, ServiceProcess

NODE_EXAMPLE = ROOT / "examples" / "node"
PYTHON_EXAMPLE = ROOT / "examples" / "python" / "client.py"
CLIENT_TIMEOUT_S = 90
OUTAGE_S = 5.0


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


async def start_client(command: Sequence[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_client(command: Sequence[str], env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Run a client to completion (the server keeps serving on this loop) → (stdout, RESULT)."""
    return await client_result(await start_client(command, env), command)


async def client_result(
    process: asyncio.subprocess.Process, command: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    """Wait for a started client → (stdout, RESULT); fail if it fails or hangs."""
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


def node_command(address: str) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    if not (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("examples/node has no node_modules: run `make examples-node` (npm ci)")
    return [node, str(NODE_EXAMPLE / "client.js"), address]


def python_env() -> dict[str, str]:
    pythonpath = os.pathsep.join(
        filter(None, [str(ROOT / "generated"), os.environ.get("PYTHONPATH")])
    )
    return client_env(PYTHONPATH=pythonpath)


async def test_node_client(live_server: TaskServer) -> None:
    output, result = await run_client(node_command(f"127.0.0.1:{live_server.port}"), client_env())
    await check_result(live_server, output, result)
    # proto-loader options: int64 as decimal strings, enums by name.
    assert all(isinstance(task_id, str) for task_id in result["created"])
    assert "TASK_STATUS_PENDING" in output


async def test_python_client(live_server: TaskServer) -> None:
    output, result = await run_client(
        [sys.executable, str(PYTHON_EXAMPLE), f"127.0.0.1:{live_server.port}"], python_env()
    )
    await check_result(live_server, output, result)


async def _outage(port: int, seconds: float) -> None:
    """Hang up on every connection to `port` from the first one on, for `seconds`."""
    tried = asyncio.Event()

    def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        tried.set()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", port)
    try:
        await asyncio.wait_for(tried.wait(), CLIENT_TIMEOUT_S)
        await asyncio.sleep(seconds)  # the outage's length is what is tested
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.parametrize("example", ["python", "node"])
async def test_example_waits_for_a_server_that_starts_late(tmp_path: Path, example: str) -> None:
    """The service config's waitForReady: the first call outlives a server not up yet.

    The outage outlasts the retry policy's budget (backoffs of at most 0.2+0.4+0.8+1.6 s):
    without waitForReady the first call fails with UNAVAILABLE and the example exits 1.
    """
    port = free_port()
    address = f"127.0.0.1:{port}"
    if example == "node":
        command, env = node_command(address), client_env()
    else:
        command, env = [sys.executable, str(PYTHON_EXAMPLE), address], python_env()
    database = tmp_path / "late.db"
    flags = ("--database-url", f"sqlite+aiosqlite:///{database}", "--migrate")
    server = ServiceProcess(flags, port=port, log_path=tmp_path / "server.log")
    client = await start_client(command, env)
    try:
        await _outage(port, OUTAGE_S)  # the client's first call finds no server
        assert client.returncode is None, "the client gave up instead of waiting"
        await server.start()
        output, result = await client_result(client, command)
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
        await server.close()
    assert len(result["created"]) == 5
    assert result["listed"] == result["created"]
    # Every create carried a request_id: the server kept one idempotency key for each.
    with sqlite3.connect(database) as db:
        [(keys,)] = db.execute("SELECT count(*) FROM idempotency_keys").fetchall()
    assert keys == 1 + 5, output
