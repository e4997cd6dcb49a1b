"""The traced example clients (examples/*/traced_client.*): one trace, client to SQL."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.otlp_receiver import CLIENT, SERVER, ReceivedSpan
from tests.test_clients import NODE_EXAMPLE, ROOT, client_env, run_client
from tests.traced_server import Traced, traced_server

PYTHON_EXAMPLE = ROOT / "examples" / "python" / "traced_client.py"
SERVER_CALLS = [
    "taskmanager.v1.ProjectService/CreateProject",
    "taskmanager.v1.TaskService/CreateTask",
    "taskmanager.v1.TaskService/GetTask",
    "taskmanager.v1.TaskService/GetTask",
]


@pytest.fixture(scope="module")
async def traced(database_url: str) -> AsyncIterator[Traced]:
    async with traced_server(database_url) as running:
        yield running


async def _one_trace(traced: Traced, result: dict[str, Any], client: str) -> list[ReceivedSpan]:
    """The client's trace once its four calls' server spans have arrived."""
    trace_id = result["traceId"]

    def complete(spans: list[ReceivedSpan]) -> bool:
        ours = [s for s in spans if s.trace_id == trace_id]
        return sum(s.span.kind == SERVER for s in ours) == len(SERVER_CALLS) and any(
            s.service == client and s.parent_id == "" for s in ours
        )

    await traced.receiver.wait_for(complete)
    return traced.receiver.of_trace(trace_id)


def _check_trace(spans: list[ReceivedSpan], client: str) -> None:
    """Each server span is the child of one of the client's call spans; SQL below it."""
    by_id = {span.span_id: span for span in spans}
    servers = [span for span in spans if span.span.kind == SERVER]
    assert sorted(span.name for span in servers) == sorted(SERVER_CALLS)
    for span in servers:
        caller = by_id[span.parent_id]
        assert (caller.service, caller.span.kind) == (client, CLIENT)
        assert span.service == "taskservice"
    codes = sorted(span.attributes["rpc.grpc.status_code"] for span in servers)
    assert codes == [0, 0, 0, 5]  # the missing task: NOT_FOUND
    statements = [span for span in spans if by_id.get(span.parent_id) in servers]
    assert {"SELECT tasks", "INSERT projects"} <= {span.name for span in statements}


async def test_python_client_propagates_its_trace(traced: Traced) -> None:
    pythonpath = os.pathsep.join(
        filter(None, [str(ROOT / "generated"), os.environ.get("PYTHONPATH")])
    )
    env = client_env(PYTHONPATH=pythonpath, OTEL_EXPORTER_OTLP_ENDPOINT=traced.endpoint)
    target = f"127.0.0.1:{traced.server.port}"
    _, result = await run_client([sys.executable, str(PYTHON_EXAMPLE), target], env)
    assert result["missing"] == "NOT_FOUND"
    spans = await _one_trace(traced, result, "python-example-client")
    _check_trace(spans, "python-example-client")


async def test_node_client_propagates_its_trace(traced: Traced) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    if not (NODE_EXAMPLE / "node_modules" / "@opentelemetry" / "api").is_dir():
        pytest.fail("examples/node has no @opentelemetry modules: run `make examples-node`")
    env = client_env(OTEL_EXPORTER_OTLP_ENDPOINT=traced.endpoint)
    target = f"127.0.0.1:{traced.server.port}"
    _, result = await run_client([node, str(NODE_EXAMPLE / "traced_client.js"), target], env)
    assert result["codes"] == [0, 0, 0, 5]
    spans = await _one_trace(traced, result, "node-example-client")
    _check_trace(spans, "node-example-client")
