"""Throw-away PostgreSQL databases of a test's own, migrated, dropped afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.engine import make_url

from service.storage import migrate
from tests.conftest import _admin_dsn


def asyncpg_dsn(url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def throwaway_postgres(prefix: str) -> AsyncIterator[str]:
    """A new database on the test PostgreSQL, migrated to head; yields its SQLAlchemy URL."""
    url, dsn = _admin_dsn()
    admin = await asyncpg.connect(dsn, timeout=10)
    name = f"taskservice_{prefix}_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        database_url = make_url(url).set(database=name).render_as_string(hide_password=False)
        await asyncio.to_thread(migrate.upgrade, database_url)
        yield database_url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
