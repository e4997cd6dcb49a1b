"""The contract as tools outside Python see it: buf lint/breaking rules and buf curl.

buf comes from the `buf-bin` dev dependency. The lint/breaking tests build their own
throw-away buf workspaces (buf.yaml + protos/ + google/api copied from the
googleapis-common-protos package), as `make buf-lint` / `make buf-breaking` do.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import google.api
import pytest

from service.runtime.server import TaskServer, start_server
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
GOOGLEAPIS_PROTOS = Path(google.api.__path__[0]).parent.parent
RESOURCES = "protos/taskmanager/v1/resources.proto"


def buf_binary() -> str:
    """The buf of this virtualenv (buf-bin), else one on PATH."""
    local = Path(sys.executable).parent / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    if found is None:
        pytest.fail("buf not found: `make install` installs buf-bin (dev extras)")
    return found


def make_workspace(path: Path) -> Path:
    """A buf workspace like the repository's, with .protodeps filled as `make protodeps`."""
    path.mkdir(parents=True)
    shutil.copy(ROOT / "buf.yaml", path / "buf.yaml")
    shutil.copytree(ROOT / "protos", path / "protos")
    api = path / ".protodeps" / "googleapis" / "google" / "api"
    api.mkdir(parents=True)
    for proto in (GOOGLEAPIS_PROTOS / "google" / "api").glob("*.proto"):
        shutil.copy(proto, api)
    return path


def buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [buf_binary(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# --- buf lint / buf breaking ------------------------------------------------------------


def test_buf_lint_accepts_the_contract(tmp_path: Path) -> None:
    done = buf("lint", cwd=make_workspace(tmp_path / "ws"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_lint_still_enforces_standard_rules(tmp_path: Path) -> None:
    """The AIP exceptions are narrow: other STANDARD rules still fire."""
    workspace = make_workspace(tmp_path / "ws")
    edit(workspace / RESOURCES, "TASK_PRIORITY_URGENT = 4;", "URGENT = 4;")
    done = buf("lint", cwd=workspace)
    assert done.returncode != 0
    assert "ENUM_VALUE_PREFIX" in done.stdout or "prefixed with" in done.stdout, done.stdout
    assert ".protodeps" not in done.stdout  # third-party files are not linted


def test_buf_breaking_accepts_an_added_field(tmp_path: Path) -> None:
    base = make_workspace(tmp_path / "base")
    changed = make_workspace(tmp_path / "changed")
    edit(
        changed / RESOURCES,
        "  string description = 3 [(google.api.field_behavior) = OPTIONAL];\n",
        "  string description = 3 [(google.api.field_behavior) = OPTIONAL];\n"
        "  // A field added for the test.\n"
        "  string color = 99 [(google.api.field_behavior) = OPTIONAL];\n",
    )
    done = buf("breaking", "--against", str(base), cwd=changed)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        pytest.param(
            "  // Free-form description; may be empty.\n"
            "  string description = 4 [(google.api.field_behavior) = OPTIONAL];\n",
            "",
            'Previously present field "4" with name "description"',
            id="deleted-field",
        ),
        pytest.param(
            "string title = 3 [",
            "string name = 3 [",
            'changed name from "title" to "name"',  # JSON clients send "title"
            id="renamed-field",
        ),
        pytest.param(
            "int64 id = 1 [(google.api.field_behavior) = OUTPUT_ONLY];\n  // The project",
            "int32 id = 1 [(google.api.field_behavior) = OUTPUT_ONLY];\n  // The project",
            'changed type from "int64" to "int32"',
            id="changed-type",
        ),
    ],
)
def test_buf_breaking_rejects_a_breaking_change(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    base = make_workspace(tmp_path / "base")
    changed = make_workspace(tmp_path / "changed")
    edit(changed / RESOURCES, old, new)
    done = buf("breaking", "--against", str(base), cwd=changed)
    assert done.returncode != 0
    assert message in done.stdout, done.stdout + done.stderr


def test_buf_breaking_rejects_moving_a_message_to_another_file(tmp_path: Path) -> None:
    """FILE category: Python imports resources_pb2.TimeRange, so a move breaks clients."""
    base = make_workspace(tmp_path / "base")
    changed = make_workspace(tmp_path / "changed")
    resources = (changed / RESOURCES).read_text()
    block = re.search(r"// A half-open time interval.*?\n}\n", resources, re.S)
    assert block is not None
    (changed / RESOURCES).write_text(resources.replace(block.group(0), ""))
    service = changed / "protos/taskmanager/v1/task_service.proto"
    edit(service, "// Request of CreateTask.", block.group(0) + "\n// Request of CreateTask.")
    if 'import "google/protobuf/timestamp.proto";' not in service.read_text():
        edit(
            service,
            'import "google/protobuf/field_mask.proto";',
            'import "google/protobuf/field_mask.proto";\nimport "google/protobuf/timestamp.proto";',
        )
    done = buf("breaking", "--against", str(base), cwd=changed)
    assert done.returncode != 0
    assert 'message "TimeRange" was deleted from file' in done.stdout, done.stdout + done.stderr


# --- buf curl through reflection only ----------------------------------------------------


@pytest.fixture(scope="module")
async def live_server(database_url: str) -> AsyncIterator[TaskServer]:
    """A server of this module's own, on an ephemeral loopback port."""
    running = await start_server(Settings(database_url=database_url, address="127.0.0.1:0"))
    yield running
    await running.stop(grace=1)


async def buf_curl(
    server: TaskServer, method: str, body: dict[str, Any] | None, cwd: Path
) -> tuple[int, str]:
    """`buf curl` over gRPC with reflection, from a directory without any .proto file."""
    args = [buf_binary(), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    if body is not None:
        args += ["-d", json.dumps(body)]
    target = f"http://127.0.0.1:{server.port}"
    args += ["--list-methods", target] if method == "--list-methods" else [f"{target}/{method}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVICE_")}
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode() + stderr.decode()


async def test_buf_curl_lists_methods_by_reflection(
    live_server: TaskServer, tmp_path: Path
) -> None:
    code, output = await buf_curl(live_server, "--list-methods", None, tmp_path)
    assert code == 0, output
    methods = set(output.split())
    assert {
        "taskmanager.v1.ProjectService/CreateProject",
        "taskmanager.v1.TaskService/StreamTasks",
        "taskmanager.v1.WorkerService/GetWorker",
        "grpc.health.v1.Health/Check",
    } <= methods


async def test_buf_curl_creates_and_gets_a_project(live_server: TaskServer, tmp_path: Path) -> None:
    assert not list(tmp_path.rglob("*.proto"))
    name = f"curl-{uuid.uuid4().hex[:10]}"
    code, output = await buf_curl(
        live_server, "taskmanager.v1.ProjectService/CreateProject", {"name": name}, tmp_path
    )
    assert code == 0, output
    created = json.loads(output)
    # Proto3 JSON: int64 as a string, lowerCamel names, RFC 3339 timestamps.
    assert created["name"] == name
    assert re.fullmatch(r"[1-9][0-9]*", created["id"])
    assert created["createTime"].endswith("Z")
    assert created["etag"]

    code, output = await buf_curl(
        live_server, "taskmanager.v1.ProjectService/GetProject", {"id": created["id"]}, tmp_path
    )
    assert code == 0, output
    assert json.loads(output) == created


async def test_buf_curl_shows_rich_errors(live_server: TaskServer, tmp_path: Path) -> None:
    name = f"curl-{uuid.uuid4().hex[:10]}"
    method = "taskmanager.v1.ProjectService/CreateProject"
    code, output = await buf_curl(live_server, method, {"name": name}, tmp_path)
    assert code == 0, output
    code, output = await buf_curl(live_server, method, {"name": name}, tmp_path)
    # buf curl's exit code is the gRPC code << 3; ALREADY_EXISTS = 6.
    assert code == 6 << 3, output
    error = json.loads(output)
    assert error["code"] == "already_exists"
    assert "google.rpc.ErrorInfo" in [detail["type"] for detail in error["details"]]
