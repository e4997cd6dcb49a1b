"""Every RPC, fuzzed from its descriptors, against a server process over a socket.

For every method of every service the server registers (found generically, see
descriptor_fuzzing), on both backends:

* random requests built by walking the input message's descriptor (strings huge, NUL,
  Unicode or field names; integers at their extremes; enums known and unknown;
  Timestamps at and past their range; FieldMasks with random paths; nested and
  repeated fields),
* bytes that are not a valid request at all (random, mutated, invalid UTF-8),
* a hostile string (20,000 characters, or UTF-8 that percent-encoding triples) in every
  string field, one at a time,
* and methods no service has, called in each of the four ways,

and after each call: never INTERNAL/UNKNOWN/DATA_LOSS/UNAVAILABLE, every error carries
ErrorInfo (read with grpc_status.rpc_status), its trailers stay under TRAILER_BUDGET
with the client's default metadata limits, and the server still answers health checks.
The server is a separate process with a fresh database, so a crash is seen as one and
random writes touch no other test's data; at the end its log must hold no unexpected
error and SIGTERM must stop it with exit code 0.

FUZZ_EXAMPLES sets the random requests per RPC (default below: the whole module adds
about a minute to the suite); FUZZ_RANDOM=1 explores new examples on every run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from service.storage import migrate
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from tests.conftest import BACKENDS, _admin_dsn
from tests.descriptor_fuzzing import (
    HOSTILE_TEXTS,
    Outcome,
    Rpc,
    call,
    failed_outcome,
    messages,
    served_rpcs,
    string_paths,
    with_string,
)
from tests.infra.service_process import ServiceProcess, service_process

log = logging.getLogger(__name__)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
RAW_EXAMPLES = 10
RPCS = served_rpcs()
# What the server's log must never show: the translator's INTERNAL, grpc's own handler
# failures (UNKNOWN), a crash.
LOG_ALARMS = ("unexpected error", "Unexpected [", "Traceback", "Segmentation fault")


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=not os.environ.get("FUZZ_RANDOM"),
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# --- the server under test --------------------------------------------------------------


@dataclass
class Target:
    """A server process on a database of its own."""

    server: ServiceProcess

    @property
    def address(self) -> str:
        return self.server.address

    @contextmanager
    def channel(self) -> Iterator[grpc.Channel]:
        with grpc.insecure_channel(self.address) as opened:
            yield opened

    def assert_up(self, channel: grpc.Channel, after: str) -> None:
        assert self.server.running, f"the server died after {after}:\n{self.tail()}"
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING, after

    def tail(self) -> str:
        return self.server.log[-4000:]


@asynccontextmanager
async def fresh_database(backend: str, directory: Path) -> AsyncIterator[str]:
    """An empty database of `backend`, migrated to head, dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / 'fuzz.db'}"
        await asyncio.to_thread(migrate.upgrade, url)
        yield url
        return
    admin_url, dsn = _admin_dsn()
    admin = await asyncpg.connect(dsn, timeout=10)
    name = f"taskservice_fuzz_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        await asyncio.to_thread(migrate.upgrade, url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def seed(address: str) -> None:
    """A few projects, workers and tasks (a tree, one deleted) for small ids to find."""
    with grpc.insecure_channel(address) as channel:
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        for index in range(3):
            project = projects.CreateProject(
                project_service_pb2.CreateProjectRequest(name=f"fuzz-{index}")
            )
            worker = workers.CreateWorker(
                worker_service_pb2.CreateWorkerRequest(
                    worker=resources_pb2.Worker(name="W", email=f"w{index}@fuzz.example")
                )
            )
            parent = None
            for number in range(4):
                task = resources_pb2.Task(
                    project_id=project.id,
                    title=f"task {number}",
                    tags=["a", "b"][: number % 3],
                    assignee_id=worker.id if number % 2 else None,
                    parent_task_id=parent,
                )
                parent = tasks.CreateTask(task_service_pb2.CreateTaskRequest(task=task)).id
            tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=parent))


@pytest.fixture(scope="module", params=BACKENDS)
async def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Target]:
    directory = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    async with (
        fresh_database(request.param, directory) as url,
        service_process("--database-url", url, log_path=directory / "server.log") as running,
    ):
        await asyncio.to_thread(seed, running.address)
        yield Target(running)


def check(target: Target, channel: grpc.Channel, rpc: Rpc, sent: object, outcome: Outcome) -> None:
    """Assert the call ended well-formed and the server is still up."""
    problems = outcome.problems()
    assert not problems, f"{rpc}: {'; '.join(problems)}\nrequest: {str(sent)[:600]}"
    target.assert_up(channel, f"{rpc} {str(sent)[:200]}")


def ids(rpc: Rpc) -> str:
    return str(rpc).rsplit(".", 1)[-1]


# --- the properties ---------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rpc", RPCS, ids=ids)
async def test_random_requests_end_well_formed(target: Target, rpc: Rpc) -> None:
    requests = st.lists(messages(rpc.input), min_size=1, max_size=3 if rpc.client_streaming else 1)
    codes = Counter[str]()

    def run() -> None:
        with target.channel() as channel:

            @fuzz_settings(EXAMPLES)
            @given(sent=requests)
            def property_(sent: list[object]) -> None:
                outcome = call(channel, rpc, sent)
                codes[outcome.code.name] += 1
                check(target, channel, rpc, sent, outcome)

            property_()

    await asyncio.to_thread(run)
    # How far the requests got (OK and NOT_FOUND reached the database): check it here
    # when changing the strategies (pytest --log-cli-level=INFO).
    log.info("%s: %s", rpc, dict(codes))


def _invalid_utf8(rpc: Rpc) -> list[bytes]:
    """The request with each top-level string field holding bytes that are not UTF-8."""
    return [
        bytes([fd.number << 3 | 2, 3]) + b"\xff\xfe\xfd"
        for fd in rpc.input.fields
        if fd.type == FieldDescriptor.TYPE_STRING and fd.number < 16
    ]


def raw_bodies(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """Bytes that are not a valid request: random, a valid one mutated, invalid UTF-8."""
    serialized = messages(rpc.input).map(lambda message: message.SerializeToString())

    def mutate(data: bytes, at: int, byte: int, cut: bool) -> bytes:
        if not data:
            return bytes([byte])
        at %= len(data)
        return data[:at] if cut else data[:at] + bytes([byte]) + data[at + 1 :]

    mutated = st.builds(
        mutate, serialized, st.integers(0, 10**6), st.integers(0, 255), st.booleans()
    )
    candidates = [st.binary(min_size=1, max_size=40), mutated]
    if invalid := _invalid_utf8(rpc):
        candidates.append(st.sampled_from(invalid))
    return st.one_of(*candidates)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rpc", RPCS, ids=ids)
async def test_bytes_that_are_no_request_end_well_formed(target: Target, rpc: Rpc) -> None:
    def run() -> None:
        with target.channel() as channel:

            @fuzz_settings(RAW_EXAMPLES)
            @given(body=raw_bodies(rpc))
            def property_(body: bytes) -> None:
                check(target, channel, rpc, body, call(channel, rpc, [body], serialized=True))

            property_()

    await asyncio.to_thread(run)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rpc", RPCS, ids=ids)
async def test_a_hostile_string_in_any_field_ends_well_formed(target: Target, rpc: Rpc) -> None:
    paths = list(string_paths(rpc.input))

    def run() -> list[str]:
        tried = []
        with target.channel() as channel:
            for path in paths:
                name = ".".join(fd.name for fd in path)
                for text in HOSTILE_TEXTS:
                    sent = with_string(rpc.input, path, text)
                    outcome = call(channel, rpc, [sent])
                    check(target, channel, rpc, f"{name} = {text[:20]!r}… ({len(text)})", outcome)
                tried.append(name)
        return tried

    tried = await asyncio.to_thread(run)
    assert len(tried) == len(paths)


UNKNOWN_PATHS = (
    "/taskmanager.v1.TaskService/DropTasks",
    "/grpc.health.v1.Health/Nope",
    "/x",
    "/a/" + "é" * 1500,
)


def invoke(channel: grpc.Channel, kind: str, path: str) -> None:
    """Call `path` as a method of `kind` (unary_unary, ...) and read all it answers."""
    method = getattr(channel, kind)(path)
    argument = iter([b"", b"\x08\x01"]) if kind.startswith("stream") else b"\x08\x01"
    result = method(argument, timeout=10)
    if kind.endswith("stream"):
        list(result)


@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream", "stream_unary", "stream_stream"])
def test_an_unknown_method_is_unimplemented_with_error_info(target: Target, kind: str) -> None:
    with target.channel() as channel:
        for path in UNKNOWN_PATHS:
            with pytest.raises(grpc.RpcError) as raised:
                invoke(channel, kind, path)
            outcome = Outcome(grpc.StatusCode.OK)
            failed_outcome(raised.value, outcome)
            assert outcome.code == grpc.StatusCode.UNIMPLEMENTED
            info = outcome.error_info()
            assert info is not None
            assert info.reason == "METHOD_NOT_FOUND"
            problems = [p for p in outcome.problems() if "UNIMPLEMENTED" not in p]
            assert not problems, problems
            target.assert_up(channel, path[:40])


def test_every_rpc_reflection_lists_is_fuzzed(target: Target) -> None:
    with target.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    listed = {service.name for service in response.list_services_response.service}
    fuzzed = {rpc.method.containing_service.full_name for rpc in RPCS}
    assert listed == fuzzed


def test_the_server_logged_no_unexpected_error(target: Target) -> None:
    """Runs last for each backend: every call above left the log clean."""
    log = target.server.log
    for alarm in LOG_ALARMS:
        assert alarm not in log, f"{alarm!r} in the server log:\n{target.tail()}"
