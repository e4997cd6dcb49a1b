"""The one session scope: connections always go back, readers never hold up writers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.runtime.server import TaskServer
from service.settings import Settings
from service.storage.database import UnitOfWork, create_engine, make_session_factory
from service.storage.models import Project, utc_now
from tests.conftest import unique, wait_until

WAIT = 10.0


@pytest.fixture
async def engine(server: TaskServer, database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of its own on the (migrated) test database, so its pool is the test's."""
    engine = create_engine(Settings(database_url=database_url))
    yield engine
    await engine.dispose()


async def test_cancelled_while_closing_still_returns_its_connection(engine: AsyncEngine) -> None:
    # A client hanging up on a stream cancels the batch wherever it is, even mid-close.
    rolling_back = asyncio.Event()
    event.listen(engine.sync_engine, "rollback", lambda _connection: rolling_back.set())

    async def write() -> None:
        # A writing unit of work: its transaction makes ROLLBACK a real round trip.
        async with UnitOfWork(make_session_factory(engine)) as uow:
            await uow.session.exec(text("SELECT 1"))

    writer = asyncio.create_task(write())
    await rolling_back.wait()  # the writer now awaits its ROLLBACK inside close()
    assert not writer.done()
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    await wait_until(lambda: engine.pool.checkedout() == 0, WAIT)  # type: ignore[attr-defined]


async def test_open_read_does_not_block_a_writer(engine: AsyncEngine) -> None:
    factory = make_session_factory(engine)
    async with UnitOfWork(factory, read_only=True) as reader:
        await reader.session.exec(text("SELECT count(*) FROM projects"))
        # The reader's transaction is open; a writer commits without waiting for it.
        async with asyncio.timeout(WAIT), UnitOfWork(factory) as writer:
            now = utc_now()
            writer.session.add(
                Project(name=unique("written-under-a-reader"), create_time=now, update_time=now)
            )
            await writer.commit()


async def test_read_only_unit_of_work_refuses_to_commit(engine: AsyncEngine) -> None:
    async with UnitOfWork(make_session_factory(engine), read_only=True) as uow:
        with pytest.raises(RuntimeError, match="read-only"):
            await uow.commit()


async def test_read_only_unit_of_work_holds_a_connection_only_while_a_statement_runs(
    engine: AsyncEngine,
) -> None:
    pool = engine.pool
    async with UnitOfWork(make_session_factory(engine), read_only=True) as uow:
        for _ in range(2):  # the session takes a connection again for its next statement
            row = await uow.projects.fetch_row(select(func.count()).select_from(Project), {})
            assert row is not None
            assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_writes_are_transactions_and_reads_after_them_are_not(database_url: str) -> None:
    # PostgreSQL connections rest in AUTOCOMMIT; a unit of work that writes gets a real
    # transaction (rolled back here), and its connection goes back to the pool resting
    # again, so the next read sends no BEGIN.
    engine = create_engine(Settings(database_url=database_url, pool_size=1, max_overflow=0))
    sent: list[str] = []  # asyncpg logs what it sends by itself (BEGIN, ROLLBACK) ...
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    try:
        async with engine.connect() as connection:  # ... on the pool's one connection
            raw = await connection.get_raw_connection()
            if engine.dialect.name == "postgresql":
                raw.driver_connection.add_query_logger(lambda query: sent.append(query.query))
        factory = make_session_factory(engine)
        name = unique("never-committed")
        async with UnitOfWork(factory) as writer:
            now = utc_now()
            await writer.projects.add(Project(name=name, create_time=now, update_time=now))
        async with UnitOfWork(factory, read_only=True) as reader:
            statement = select(func.count()).select_from(Project).where(Project.name == name)
            assert await reader.projects.fetch_row(statement, {}) == (0,)
    finally:
        await engine.dispose()
    if engine.dialect.name == "postgresql":
        # (asyncpg logs its own queries after they ran, so only the set is certain.)
        words = sorted(query.split()[0].rstrip(";").upper() for query in sent)
        assert words == ["BEGIN", "INSERT", "ROLLBACK", "SELECT"], sent
        assert any("BEGIN ISOLATION LEVEL READ COMMITTED" in query for query in sent), sent
