"""Primary failover without a restart: a multi-host URL follows the promoted standby.

Each test builds its own primary and streaming standby (a failover is one-way) and runs
the server as a separate process under write load while the primary goes away and the
standby is promoted (`pg_ctl promote`, what Patroni does).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest

from service.storage import migrate
from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)
from tests.infra.postgres_cluster import StreamingPair, start_streaming_pair
from tests.infra.service_process import service_process

RECOVERY_LIMIT = 5.0  # seconds from the promotion to the first successful write
CALL_TIMEOUT = 5.0
WRITERS = 8
DATABASE = "taskservice"


@dataclass
class WriteLoad:
    """CreateTask calls from several clients: what was acknowledged, what failed, when."""

    tasks: task_service_pb2_grpc.TaskServiceStub
    project_id: int
    acknowledged: dict[int, str] = field(default_factory=dict)  # id -> title
    failures: list[tuple[float, str]] = field(default_factory=list)  # (time, code)
    successes: list[tuple[float, int]] = field(default_factory=list)  # (time, id)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def writer(self) -> None:
        while not self.stop.is_set():
            title = f"failover {uuid.uuid4().hex}"
            request = task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(project_id=self.project_id, title=title)
            )
            try:
                created = await self.tasks.CreateTask(request, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                self.failures.append((time.monotonic(), error.code().name))
                await asyncio.sleep(0.01)
                continue
            self.acknowledged[created.id] = title
            self.successes.append((time.monotonic(), created.id))

    def ok_after(self, moment: float) -> int:
        return sum(1 for at, _ in self.successes if at > moment)

    def first_ok_after(self, moment: float) -> float:
        return min(at for at, _ in self.successes if at > moment)

    async def until(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)


@pytest.fixture
def fresh_pair(request: pytest.FixtureRequest) -> Iterator[StreamingPair]:
    """A primary and standby of this test's own (synchronous if the test is parametrised so)."""
    pair = start_streaming_pair(synchronous=getattr(request, "param", False))
    try:
        pair.primary.query(f'CREATE DATABASE "{DATABASE}"')
        migrate.upgrade(pair.primary.url(DATABASE))
        pair.wait_streaming()
        yield pair
    finally:
        pair.remove()


def libpq_url(pair: StreamingPair) -> str:
    """The form operators copy from libpq: hosts separated by commas."""
    return (
        f"postgresql://postgres@127.0.0.1:{pair.primary.port},127.0.0.1:{pair.standby.port}"
        f"/{DATABASE}?target_session_attrs=read-write"
    )


def sqlalchemy_url(pair: StreamingPair) -> str:
    """SQLAlchemy's own form: one host= parameter per host."""
    return (
        f"postgresql+asyncpg://postgres@/{DATABASE}?host=127.0.0.1:{pair.primary.port}"
        f"&host=127.0.0.1:{pair.standby.port}&target_session_attrs=read-write"
    )


@asynccontextmanager
async def write_load(address: str) -> AsyncIterator[WriteLoad]:
    """WRITERS clients creating tasks in a new project until the block ends."""
    async with grpc.aio.insecure_channel(address) as channel:
        project = await project_grpc(channel).CreateProject(
            project_service_pb2.CreateProjectRequest(name=f"failover-{uuid.uuid4().hex[:8]}"),
            timeout=CALL_TIMEOUT,
        )
        load = WriteLoad(task_service_pb2_grpc.TaskServiceStub(channel), project.id)
        writers = [asyncio.create_task(load.writer()) for _ in range(WRITERS)]
        try:
            yield load
        finally:
            load.stop.set()
            await asyncio.gather(*writers)


def project_grpc(channel: grpc.aio.Channel) -> project_service_pb2_grpc.ProjectServiceStub:
    return project_service_pb2_grpc.ProjectServiceStub(channel)


async def _stored_tasks(pair: StreamingPair, project_id: int) -> dict[int, str]:
    """id -> title of every task of the project on the (new) primary."""
    connection = await asyncpg.connect(pair.standby.dsn(DATABASE))
    try:
        rows = await connection.fetch(
            "SELECT id, title FROM tasks WHERE project_id = $1", project_id
        )
    finally:
        await connection.close()
    return {row["id"]: row["title"] for row in rows}


@pytest.mark.parametrize("fresh_pair", [True], indirect=True, ids=["synchronous"])
async def test_writes_resume_after_promotion_and_no_acknowledged_write_is_lost(
    fresh_pair: StreamingPair,
) -> None:
    pair = fresh_pair
    async with service_process("--database-url", libpq_url(pair)) as server:
        async with write_load(server.address) as load:
            await load.until(lambda: len(load.acknowledged) >= 150)
            await asyncio.to_thread(pair.primary.stop, "immediate")  # the primary crashes
            await asyncio.to_thread(pair.standby.promote)
            promoted = time.monotonic()
            await load.until(lambda: load.ok_after(promoted) >= 100, timeout=30)
        log = server.log

    first_write = load.first_ok_after(promoted)
    assert first_write - promoted <= RECOVERY_LIMIT, log
    assert {code for _, code in load.failures} <= {"UNAVAILABLE"}, load.failures
    # Synchronous replication: every acknowledged write reached the standby before its ack.
    stored = await _stored_tasks(pair, load.project_id)
    lost = {task_id for task_id, title in load.acknowledged.items() if stored.get(task_id) != title}
    assert lost == set()
    assert "INTERNAL" not in log


async def test_a_demoted_primary_is_left_for_the_promoted_standby_within_seconds(
    fresh_pair: StreamingPair,
) -> None:
    # The old primary stays up but turns read-only (fenced, as a failover manager
    # does): the pool's connections to it must be replaced, not reused forever.
    pair = fresh_pair
    async with service_process("--database-url", sqlalchemy_url(pair)) as server:
        async with write_load(server.address) as load:
            await load.until(lambda: len(load.acknowledged) >= 100)
            await asyncio.to_thread(
                pair.primary.query, "ALTER SYSTEM SET default_transaction_read_only = on"
            )
            await asyncio.to_thread(pair.primary.query, "SELECT pg_reload_conf()")
            demoted = time.monotonic()
            await load.until(lambda: sum(1 for at, _ in load.failures if at > demoted) >= 20)
            await asyncio.to_thread(pair.standby.promote)
            promoted = time.monotonic()
            await load.until(lambda: load.ok_after(promoted + RECOVERY_LIMIT) >= 100, timeout=30)
        log = server.log

    first_write = load.first_ok_after(promoted)
    assert first_write - promoted <= RECOVERY_LIMIT, log
    assert {code for _, code in load.failures} == {"UNAVAILABLE"}, log
    # Once writes were back, none failed: no connection to the read-only server was kept.
    assert [at for at, _ in load.failures if at > first_write] == []
    stored = await _stored_tasks(pair, load.project_id)
    assert all(task_id in stored for at, task_id in load.successes if at >= first_write)
