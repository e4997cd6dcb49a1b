"""AuditEvent messages from stored audit events."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from service.api.mapping.timestamps import to_timestamp
from service.storage.models import AuditEvent
from taskmanager.v1 import resources_pb2


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
    """The API form of an audit event."""
    message = resources_pb2.AuditEvent(
        id=event.id or 0,
        entity_type=event.entity_type,
        entity_id=event.entity_id,
        action=event.action,
        actor=event.actor,
        changes=[
            resources_pb2.FieldChange(
                field=name, old_value=_value(change["old"]), new_value=_value(change["new"])
            )
            for name, change in event.changes.items()
        ],
    )
    to_timestamp(event.event_time, message.event_time)
    return message
