"""Retention: purge soft-deleted tasks after 30 days, idempotency keys after 7, and the
change feed's history after feed_retention_days."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from service.settings import Settings
from service.storage.database import UnitOfWork, make_session_factory
from service.storage.engines import create_engine
from service.storage.models import utc_now

TASK_RETENTION_DAYS = 30
# How long a create's request_id is remembered (the AIP-155 window the README documents).
REQUEST_ID_RETENTION_DAYS = 7
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purged:
    """How many rows one purge removed."""

    tasks: int
    request_ids: int
    feed_horizon: int  # change-feed positions up to this commit number are gone


async def purge(
    settings: Settings,
    task_retention: timedelta = timedelta(days=TASK_RETENTION_DAYS),
    request_id_retention: timedelta = timedelta(days=REQUEST_ID_RETENTION_DAYS),
    feed_retention: timedelta | None = None,
) -> Purged:
    """Hard-delete what is past retention, in one transaction (run it daily, e.g. from cron).

    The change feed keeps `feed_retention` (default: settings.feed_retention_days) of
    history; WatchTasks cursors older than that become CURSOR_EXPIRED.
    """
    if feed_retention is None:
        feed_retention = timedelta(days=settings.feed_retention_days)
    engine = create_engine(settings)
    try:
        async with UnitOfWork(make_session_factory(engine), "purge") as uow:
            now = utc_now()
            tasks = await uow.tasks.purge_deleted(deleted_before=now - task_retention)
            keys = await uow.idempotency.purge_before(now - request_id_retention)
            horizon = await uow.feed.purge_before(now - feed_retention)
            await uow.commit()
    finally:
        await engine.dispose()
    log.info(
        "purged %d soft-deleted tasks, %d request ids and the change feed up to commit %d",
        tasks,
        keys,
        horizon,
    )
    return Purged(tasks, keys, horizon)
