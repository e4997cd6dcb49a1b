"""The REST peer: the FastAPI + SQLModel service users would otherwise build, the tutorial's way."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# runtime, and `session_dep` is local to make_app, where a string could not be resolved.
import argparse
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import BigInteger, Column, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from service.settings import normalise_database_url


def utc_now() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


class PeerModel(SQLModel, registry=registry()):
    """Base with its own metadata, so the peer's `tasks` table can share a process with
    TaskService's models (the bench counts both apps' statements in-process)."""


class TaskBase(PeerModel):
    """The fields a client sends."""

    project_id: int
    title: str = Field(min_length=1, max_length=500)
    description: str = ""
    status: str = "PENDING"
    priority: int = Field(default=2, ge=1, le=4)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSONB, nullable=False))
    assignee_id: int | None = None
    parent_task_id: int | None = None


class Task(TaskBase, table=True):
    """The `tasks` table (the columns the service's BASIC view shows)."""

    __tablename__ = "tasks"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
    create_time: datetime = Field(default_factory=utc_now, sa_type=DateTime(timezone=True))
    update_time: datetime = Field(default_factory=utc_now, sa_type=DateTime(timezone=True))
    version: int = 1
    delete_time: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class TaskCreate(TaskBase):
    """POST /tasks body."""


class TaskPublic(TaskBase):
    """What the API returns."""

    id: int
    create_time: datetime
    update_time: datetime
    version: int
    delete_time: datetime | None


def make_app(database_url: str) -> FastAPI:
    """The application on its own engine."""
    engine: AsyncEngine = create_async_engine(
        normalise_database_url(database_url), pool_pre_ping=True
    )

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with AsyncSession(engine) as session:
            yield session

    session_dep = Annotated[AsyncSession, Depends(get_session)]
    app = FastAPI(title="Task REST peer")
    app.state.engine = engine  # for the bench's statement count (roundtrips.py)

    @app.get("/tasks/{task_id}", response_model=TaskPublic)
    async def read_task(task_id: int, session: session_dep) -> Task:
        task = await session.get(Task, task_id)
        if task is None:
            raise HTTPException(status_code=404, detail="Task not found")
        return task

    # No audit event, reference checks beyond the foreign keys or idempotency key: TaskService's
    # CreateTask does all three, so the comparison favours the peer.
    @app.post("/tasks", response_model=TaskPublic, status_code=201)
    async def create_task(data: TaskCreate, session: session_dep) -> Task:
        task = Task.model_validate(data)
        session.add(task)
        await session.commit()
        await session.refresh(task)
        return task

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m bench.perf.rest_app`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--address", required=True, help="host:port to listen on")
    parser.add_argument("--database-url", required=True, help="SQLAlchemy or postgresql:// URL")
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    # uvicorn's defaults (uvloop and httptools when installed, as `fastapi[standard]` has them);
    # "warning" writes no access log line per request.
    uvicorn.run(make_app(args.database_url), host=host, port=int(port), log_level="warning")


if __name__ == "__main__":
    main()
