"""The WatchTasks examples (examples/python/watch.py, examples/node/watch.js) against a
live server: the resume loop keeps a copy equal to ListTasks across a lost stream."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import pytest

from service.runtime.server import TaskServer
from tests.test_clients import (
    NODE_EXAMPLE,
    ROOT,
    client_env,
    live_server,
    run_client,
)

__all__ = ["live_server"]  # the fixture, shared with test_clients


def check_watch_result(result: dict[str, Any]) -> None:
    """Two tasks in the snapshot, two live changes, two made while disconnected."""
    assert result["snapshot"] == 2
    assert result["changes"] == 6
    assert result["streams"] == 3, "a snapshot stream, a live one, a resumed one"
    assert result["mirror"] == result["listed"]
    assert sorted(result["mirror"].values()) == ["first, renamed", "third, renamed"]


async def test_python_watch_example(live_server: TaskServer) -> None:
    pythonpath = os.pathsep.join(
        filter(None, [str(ROOT / "generated"), os.environ.get("PYTHONPATH")])
    )
    _, result = await run_client(
        [sys.executable, str(ROOT / "examples/python/watch.py"), f"127.0.0.1:{live_server.port}"],
        client_env(PYTHONPATH=pythonpath),
    )
    check_watch_result(result)


async def test_node_watch_example(live_server: TaskServer) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    _, result = await run_client(
        [node, str(NODE_EXAMPLE / "watch.js"), f"127.0.0.1:{live_server.port}"],
        client_env(),
    )
    check_watch_result(result)
