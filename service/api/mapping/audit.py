"""AuditEvent messages from stored audit events, with values in API terms.

Events are stored as the repositories snapshot them, in storage encodings (status
"DONE", priority 3, times as ISO 8601 text); clients read them in the terms of the API
(TASK_STATUS_DONE, TASK_PRIORITY_HIGH, RFC 3339 "Z" times as in protobuf JSON). The
translation happens here, at read time, so every event reads the same however old it
is, and the stored trail is never rewritten.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from service.api.mapping.tasks import PRIORITY_FROM_MESSAGE, STATUS_TO_MESSAGE
from service.api.mapping.timestamps import to_timestamp
from service.storage.models import AuditEvent, TaskStatus
from taskmanager.v1 import resources_pb2


def _status_name(value: Any) -> Any:
    try:
        return resources_pb2.TaskStatus.Name(STATUS_TO_MESSAGE[TaskStatus(value)])
    except ValueError:  # not a stored status: shown as it is
        return value


def _priority_name(value: Any) -> Any:
    # Stored priorities are the API's enum numbers (LOW=1 .. URGENT=4).
    if isinstance(value, bool) or not isinstance(value, int) or value not in PRIORITY_FROM_MESSAGE:
        return value
    return resources_pb2.TaskPriority.Name(value)  # type: ignore[arg-type]


def _rfc3339(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    stamp = Timestamp()
    to_timestamp(moment, stamp)
    return stamp.ToJsonString()


# How a stored value of each (entity type, field) reads in API terms; others as stored.
_IN_API_TERMS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("task", "status"): _status_name,
    ("task", "priority"): _priority_name,
    ("task", "delete_time"): _rfc3339,
    ("task", "due_time"): _rfc3339,
}


def _value(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int | float):
        message.number_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, list):
        message.list_value.extend(value)
    else:
        message.string_value = str(value)
    return message


def event_to_message(event: AuditEvent) -> resources_pb2.AuditEvent:
    """The API form of an audit event, its values in API terms."""
    changes = []
    for name, change in event.changes.items():
        in_api_terms = _IN_API_TERMS.get((event.entity_type, name), _as_stored)
        changes.append(
            resources_pb2.FieldChange(
                field=name,
                old_value=_value(in_api_terms(change["old"])),
                new_value=_value(in_api_terms(change["new"])),
            )
        )
    message = resources_pb2.AuditEvent(
        id=event.id or 0,
        entity_type=event.entity_type,
        entity_id=event.entity_id,
        action=event.action,
        actor=event.actor,
        changes=changes,
    )
    to_timestamp(event.event_time, message.event_time)
    return message


def _as_stored(value: Any) -> Any:
    return value
