"""The contract as tools outside Python see it: buf lint/breaking rules and buf curl.

buf comes from the `buf-bin` dev dependency. The lint/breaking tests build their own
throw-away buf workspaces (buf.yaml + protos/, which vendors the googleapis file it
imports), as `make buf-lint` / `make buf-breaking` do.
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

import pytest
from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_tools import protoc

from service.runtime.server import TaskServer, start_server
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = "protos/taskmanager/v1/resources.proto"


def buf_binary() -> str:
    """The buf of this virtualenv (buf-bin), else one on PATH."""
    local = Path(sys.executable).parent / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    if found is None:
        pytest.fail("buf not found: `make install` installs buf-bin (dev extras)")
    return found


def make_workspace(path: Path) -> Path:
    """A buf workspace like the repository's: buf.yaml and protos/, nothing else."""
    path.mkdir(parents=True)
    shutil.copy(ROOT / "buf.yaml", path / "buf.yaml")
    shutil.copytree(ROOT / "protos", path / "protos")
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
    assert "protos/google" not in done.stdout  # third-party files are not linted


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


# --- protos/ is self-contained ----------------------------------------------------------------

PROTOS = ROOT / "protos"
IMPORT = re.compile(r'^import\s+(?:public\s+|weak\s+)?"([^"]+)";', re.M)


def transitive_imports(start: list[str]) -> set[str]:
    """Files under protos/ that `start` imports, directly or not (google/protobuf excluded)."""
    found: set[str] = set()
    pending = list(start)
    while pending:
        for imported in IMPORT.findall((PROTOS / pending.pop()).read_text()):
            if imported.startswith("google/protobuf/") or imported in found:
                continue  # the well-known types ship with every protoc
            assert (PROTOS / imported).is_file(), f"{imported} is imported but not in protos/"
            found.add(imported)
            pending.append(imported)
    return found


def test_vendored_protos_are_exactly_what_the_contract_imports() -> None:
    ours = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "taskmanager").rglob("*.proto"))
    vendored = {
        str(path.relative_to(PROTOS))
        for path in PROTOS.rglob("*.proto")
        if not path.is_relative_to(PROTOS / "taskmanager")
    }
    assert vendored == transitive_imports(ours) - set(ours)
    for proto in vendored:  # googleapis' licence travels with its files
        assert "Apache License" in (PROTOS / proto).parent.joinpath("LICENSE").read_text()


def compile_protos(files: list[str], out: Path) -> descriptor_pb2.FileDescriptorSet:
    """`protoc -I protos`, plus protoc's own include dir (google/protobuf/*, in every protoc)."""
    well_known = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTOS}", f"-I{well_known}", "--include_imports"]
    args.append(f"--descriptor_set_out={out}")
    assert protoc.main([*args, *files]) == 0
    compiled = descriptor_pb2.FileDescriptorSet()
    compiled.ParseFromString(out.read_bytes())
    return compiled


def test_protos_compile_with_only_protos_on_the_include_path(tmp_path: Path) -> None:
    """What a Go/Java/Node team does after copying protos/: protoc -I protos, nothing else."""
    ours = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "taskmanager").rglob("*.proto"))
    compiled = compile_protos(ours, tmp_path / "set.pb")
    assert {file.name for file in compiled.file} >= {*ours, "google/api/field_behavior.proto"}


def test_vendored_field_behavior_agrees_with_the_python_runtime(tmp_path: Path) -> None:
    """Python's stubs use googleapis-common-protos' copy: the vendored one must mean the same."""
    pool = descriptor_pool.DescriptorPool()
    for file in compile_protos(["google/api/field_behavior.proto"], tmp_path / "set.pb").file:
        pool.Add(file)
    vendored = pool.FindEnumTypeByName("google.api.FieldBehavior").values_by_name
    runtime = field_behavior_pb2.FieldBehavior.DESCRIPTOR.values_by_name
    for name, value in vendored.items():
        assert runtime[name].number == value.number, name
    extension = pool.FindExtensionByName("google.api.field_behavior")
    assert extension.number == field_behavior_pb2.field_behavior.number
