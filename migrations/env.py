"""Alembic environment: async engine, URL from the caller or TaskService settings."""

from __future__ import annotations

import asyncio
import logging
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from service.settings import Settings, normalise_database_url
from service.storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
# Only configure logging when run from the alembic CLI: the server and the
# tests call Alembic in-process and have their own logging set up.
if config.config_file_name is not None and not logging.getLogger().handlers:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url") or Settings().database_url
    return normalise_database_url(url)


def _include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Skip objects declared for other dialects (e.g. GIN indexes off PostgreSQL)."""
    dialects = getattr(obj, "info", {}).get("dialects")
    return dialects is None or context.get_context().dialect.name in dialects


def _compare_server_default(
    context: Any,
    inspected_column: Any,
    metadata_column: Any,
    inspected_default: Any,
    metadata_default: Any,
    rendered_metadata_default: Any,
) -> bool | None:
    """Columns whose default only a migration declares, on some dialects (their info
    says so), never differ; everything else is compared as usual (None)."""
    return False if metadata_column.info.get("default_set_by_migration") else None


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None else (url or "").split(":")[0]
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode recreates tables.
        render_as_batch=dialect.startswith("sqlite"),
        compare_type=True,
        compare_server_default=_compare_server_default,
        literal_binds=connection is None,
        include_object=_include_object,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`)."""
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    """Migrate through the same async driver the service uses."""
    from service.storage.engines import create_engine, write_options

    pooler = config.attributes.get("database_pooler") or Settings().database_pooler
    engine = create_engine(
        Settings(database_url=_database_url(), pool_pre_ping=False, database_pooler=pooler),
        foreign_keys=False,
    )
    try:
        async with engine.connect() as connection:
            # One transaction around the migrations (PostgreSQL has transactional DDL).
            await connection.execution_options(**write_options(engine.dialect.name))
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
