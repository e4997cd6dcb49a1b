"""Request validation: pure checks that report every bad field at once."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection

from service.storage.errors import FieldViolation, InvalidArgument
from taskmanager.v1 import resources_pb2

TITLE_MAX = 500
NAME_MAX = 200
EMAIL_MAX = 254
TAGS_MAX = 64
TAG_MAX = 64
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Violations:
    """Collects field violations; `raise_if_any` ends validation with all of them."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str, reason: str = "INVALID_FIELD") -> None:
        self.items.append(FieldViolation(field, description, reason))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def check_id(violations: Violations, field: str, value: int) -> None:
    """A resource id must be positive."""
    if value <= 0:
        violations.add(field, "must be a positive id", "INVALID_ID")


def require_id(field: str, value: int) -> None:
    """Raise INVALID_ARGUMENT unless `value` is a positive id."""
    violations = Violations()
    check_id(violations, field, value)
    violations.raise_if_any()


def check_no_nul(violations: Violations, field: str, value: str) -> bool:
    """PostgreSQL text cannot hold NUL characters: refuse them up front."""
    if "\x00" in value:
        violations.add(field, "must not contain NUL characters", "INVALID_CHARACTER")
        return False
    return True


def check_text(violations: Violations, field: str, value: str, max_length: int) -> None:
    """Required text: not blank and at most `max_length` characters after trimming."""
    if not check_no_nul(violations, field, value):
        return
    trimmed = value.strip()
    if not trimmed:
        violations.add(field, "must not be empty", "REQUIRED")
    elif len(trimmed) > max_length:
        violations.add(field, f"must be at most {max_length} characters", "TOO_LONG")


def check_email(violations: Violations, field: str, value: str) -> None:
    """An address of the form local@domain.tld."""
    if not check_no_nul(violations, field, value):
        return
    if not value.strip():
        violations.add(field, "must not be empty", "REQUIRED")
    # Measured as stored: trimmed and lower-cased (lower() can lengthen, e.g. "İ").
    elif len(value.strip().lower()) > EMAIL_MAX or not _EMAIL.match(value.strip()):
        violations.add(field, "must be an email address", "INVALID_EMAIL")


def check_tags(violations: Violations, field: str, tags: Collection[str]) -> None:
    """At most 64 distinct, non-blank tags of at most 64 characters."""
    if len(tags) > TAGS_MAX:
        violations.add(field, f"at most {TAGS_MAX} tags", "TOO_MANY")
    seen: set[str] = set()
    for index, raw in enumerate(tags):
        tag = raw.strip()  # stored trimmed, so " a" and "a" are the same tag
        if not check_no_nul(violations, f"{field}[{index}]", tag):
            continue
        if not tag or len(tag) > TAG_MAX:
            violations.add(f"{field}[{index}]", f"must be 1 to {TAG_MAX} characters", "INVALID_TAG")
        elif tag in seen:
            violations.add(f"{field}[{index}]", "duplicate tag", "DUPLICATE_TAG")
        seen.add(tag)


def check_request_id(violations: Violations, field: str, value: str) -> None:
    """An idempotency key must be a UUID (AIP-155); empty means none."""
    if not value:
        return
    try:
        uuid.UUID(value)
    except ValueError:
        violations.add(field, "must be a UUID", "INVALID_REQUEST_ID")


# The view enums of the resources (how much a read returns).
ViewEnum = (
    type[resources_pb2.TaskView] | type[resources_pb2.ProjectView] | type[resources_pb2.WorkerView]
)


def check_enum(
    violations: Violations,
    field: str,
    value: int,
    enum: type[resources_pb2.TaskStatus] | type[resources_pb2.TaskPriority] | ViewEnum,
    *,
    allow_unspecified: bool,
) -> None:
    """A known enum number; 0 (UNSPECIFIED) only where a default applies."""
    if value == 0 and allow_unspecified:
        return
    if value == 0:
        violations.add(field, "must be specified", "REQUIRED")
    elif value not in enum.values():
        violations.add(field, f"unknown value {value}", "UNKNOWN_ENUM_VALUE")
