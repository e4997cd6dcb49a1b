"""The README's command lines, run as written (real grpcurl, buf, node) against a fresh server.

The commands come from README.md itself, in document order, so the README cannot drift
from what works: every `grpcurl`, `buf curl` and example client line of its ```sh blocks.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.infra.processes import free_port
from tests.infra.service_process import ROOT, ServiceProcess, child_environment

README = ROOT / "README.md"
README_ADDRESS = "localhost:50051"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)
EXPECTED_OUTPUT = re.compile(r"^#   (\S.*)$")
VENV_BIN = Path(sys.executable).parent
RUN_TIMEOUT = 90.0


@dataclass
class Command:
    """One command line of the README and the output lines printed below it, if any."""

    argv: list[str]
    expected_lines: list[str]
    line: int

    @property
    def tool(self) -> str:
        return self.argv[0]

    def __str__(self) -> str:
        return f"README.md:{self.line}: {shlex.join(self.argv)}"


def readme_commands(text: str) -> Iterator[Command]:
    """Every command of the README's sh blocks: continuations joined, comments dropped."""
    for block in SH_BLOCK.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).splitlines()
        index = 0
        while index < len(lines):
            start = index
            logical = lines[index]
            while logical.endswith("\\"):
                index += 1
                logical = logical[:-1] + lines[index]
            index += 1
            argv = shlex.split(logical, comments=True)
            if not argv:
                continue
            expected = []
            while index < len(lines) and (match := EXPECTED_OUTPUT.match(lines[index])):
                expected.append(match.group(1))
                index += 1
            yield Command(argv, expected, first_line + start)


def is_client_command(command: Command) -> bool:
    """The lines that talk to the server (make targets and the like are not run here)."""
    if command.tool == "buf":
        return command.argv[1] == "curl"
    return command.tool in {"grpcurl", "node", ".venv/bin/python"}


COMMANDS = [c for c in readme_commands(README.read_text()) if is_client_command(c)]


def executable(tool: str) -> str:
    """grpcurl and buf from this virtualenv (pinned dev dependencies), node from PATH."""
    if tool == ".venv/bin/python":
        return sys.executable
    local = VENV_BIN / tool
    found = str(local) if local.exists() else shutil.which(tool)
    if found is None:
        hint = "make examples-node needs Node.js" if tool == "node" else "run `make install`"
        pytest.fail(f"{tool} not found: {hint}")
    return found


def json_values(output: str) -> list[Any]:
    """The JSON documents grpcurl / buf curl printed one after another."""
    decoder = json.JSONDecoder()
    values, position = [], 0
    while position < len(output.rstrip()):
        while output[position].isspace():
            position += 1
        value, position = decoder.raw_decode(output, position)
        values.append(value)
    return values


def request_of(command: Command) -> dict[str, Any]:
    if "-d" not in command.argv:
        return {}
    body: dict[str, Any] = json.loads(command.argv[command.argv.index("-d") + 1])
    return body


def method_of(command: Command) -> str:
    """The last path segment of the method a grpcurl / buf curl line calls."""
    return command.argv[-1].rsplit("/", 1)[-1]


def field(message: dict[str, Any], json_name: str) -> Any:
    """A field by its JSON name; grpcurl prints proto names (project_id), buf curl JSON ones."""
    proto_name = re.sub(r"([A-Z])", r"_\1", json_name).lower()
    assert json_name in message or proto_name in message, f"{json_name} missing from {message}"
    return message.get(json_name, message.get(proto_name))


def assert_contains(whole: dict[str, Any], part: dict[str, Any], where: str) -> None:
    """Every field of `part` has the same value in `whole` (what was sent came back)."""
    for key, value in part.items():
        found = field(whole, key)
        if isinstance(value, dict):
            assert_contains(found, value, f"{where}.{key}")
        else:
            assert found == value, f"{where}.{key}: {found!r} != {value!r}"


def check_answer(command: Command, output: str) -> None:
    """What each kind of call must print, beyond exiting 0."""
    if command.expected_lines:
        assert output.splitlines() == command.expected_lines, f"{command}\n{output}"
        return
    if command.tool in {"node", ".venv/bin/python"}:
        assert re.search(r"^RESULT \{", output, re.M), f"{command}\n{output}"
        return
    answers = json_values(output)
    assert answers, f"{command}: printed nothing"
    request, method = request_of(command), method_of(command)
    if method == "Check":
        assert answers == [{"status": "SERVING"}]
    elif method.startswith(("List", "Stream", "BatchGet")):
        # The one repeated field of the answer: tasks, workers, projects or events.
        items = [
            item for answer in answers for v in answer.values() if isinstance(v, list) for item in v
        ]
        assert items, f"{command}: nothing listed in {output}"
        if "projectId" in request and method.endswith("Tasks"):
            assert {field(item, "projectId") for item in items} == {request["projectId"]}
    else:
        [answer] = answers
        # The resource sent (task, project, worker) comes back with the same fields.
        resource = next((value for value in request.values() if isinstance(value, dict)), {})
        assert_contains(answer, resource, str(command))
        # Top-level id (GetTask) and name (CreateProject's shorthand) alike.
        assert_contains(answer, {k: v for k, v in request.items() if k in {"id", "name"}}, "")


@pytest.fixture(scope="module")
async def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """A server process on a database of its own, so the README's ids start at 1."""
    directory = tmp_path_factory.mktemp("readme")
    database = f"sqlite+aiosqlite:///{directory / 'readme.db'}"
    flags = ("--database-url", database, "--migrate")
    server = ServiceProcess(flags, port=free_port(), log_path=directory / "server.log")
    await server.start()
    yield server
    await server.close()


def test_the_readme_has_the_commands_it_should() -> None:
    """The extraction finds what the README shows, so the test below cannot pass empty."""
    grpcurl_methods = {method_of(c) for c in COMMANDS if c.tool == "grpcurl"}
    assert {"list", "Check", "CreateProject", "UpdateTask", "StreamTasks"} <= grpcurl_methods
    assert [c for c in COMMANDS if c.tool == "buf"], "no buf curl line"
    assert {c.tool for c in COMMANDS} >= {"node", ".venv/bin/python"}


async def run(command: Command, server: ServiceProcess) -> str:
    """Run one README line against `server` (its address in place of localhost:50051)."""
    argv = [executable(command.tool)]
    argv += [arg.replace(README_ADDRESS, server.address) for arg in command.argv[1:]]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env={**child_environment(), "PYTHONPATH": str(ROOT / "generated")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    output = stdout.decode()
    assert process.returncode == 0, f"{command}\n{output}{stderr.decode()}"
    return output


async def test_readme_commands_work_in_order_on_a_fresh_server(
    fresh_server: ServiceProcess,
) -> None:
    for command in COMMANDS:
        output = await run(command, fresh_server)
        check_answer(command, output)
        if "requestId" in request_of(command):
            # As the README says: sent again, the same request_id gets the same answer.
            assert json_values(await run(command, fresh_server)) == json_values(output)
