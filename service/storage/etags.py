"""Etags (AIP-154): an entity's version counter rendered as an opaque quoted string."""

from __future__ import annotations

from typing import Protocol

from service.storage.errors import Aborted


class Versioned(Protocol):
    """An entity with an id and a version counter bumped on every write."""

    id: int | None
    version: int


def etag_for(version: int) -> str:
    """The etag of a version, e.g. `"7"` (quotes included, as in HTTP)."""
    return f'"{version}"'


def etag_of(entity: Versioned) -> str:
    """The entity's current etag."""
    return etag_for(entity.version)


def check_etag(entity: Versioned, etag: str, resource: str) -> None:
    """ABORTED unless `etag` is empty (last write wins) or still current."""
    if etag and etag != etag_of(entity):
        raise Aborted(
            "ETAG_MISMATCH",
            f"{resource} {entity.id} was changed by someone else; re-read it and retry",
            **{f"{resource}_id": entity.id, "current_etag": etag_of(entity)},
        )
