"""SQL for idempotency keys (AIP-155), enforced by the primary key on request_id."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, exc
from sqlmodel import col

from service.storage.models import IdempotencyKey, utc_now
from service.storage.repositories.base import Repository


class IdempotencyRepository(Repository[IdempotencyKey]):
    """Claims request ids and remembers the response each produced."""

    model = IdempotencyKey
    resource = "request"

    async def lookup(self, request_id: str) -> IdempotencyKey | None:
        """The stored key, if a request with this id committed."""
        return await self.session.get(IdempotencyKey, request_id, populate_existing=True)

    async def claim(self, request_id: str, method: str, payload_hash: str) -> IdempotencyKey | None:
        """Insert the key; None if another request holds it (it committed first).

        On PostgreSQL the INSERT waits for a concurrent holder's transaction and
        then fails on the primary key; the SAVEPOINT keeps our transaction usable.
        """
        key = IdempotencyKey(
            request_id=request_id, method=method, payload_hash=payload_hash, create_time=utc_now()
        )
        try:
            async with self.session.begin_nested():
                self.session.add(key)
        except exc.IntegrityError:
            return None
        return key

    async def purge_before(self, cutoff: datetime) -> int:
        """Forget keys older than `cutoff`; returns how many."""
        result = await self.session.exec(
            delete(IdempotencyKey).where(col(IdempotencyKey.create_time) < cutoff)
        )
        return int(result.rowcount)
