"""Server streams that send responses already serialized (bytes), encoded once and
shared by many calls: a change-feed read goes out to every watcher with one filter as
the same bytes, instead of one message built and serialized per watcher."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from taskmanager.v1 import task_service_pb2

_TASK_SERVICE = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name

# Fully qualified methods whose handlers may yield bytes as well as messages.
SERIALIZED_RESPONSE_METHODS = frozenset({f"/{_TASK_SERVICE}/WatchTasks"})


def accept_serialized(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler layer that lets those methods' bytes through the response serializer."""
    if method not in SERIALIZED_RESPONSE_METHODS or handler.response_serializer is None:
        return handler
    return handler._replace(response_serializer=_passing_bytes(handler.response_serializer))


def _passing_bytes(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def serializer(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return serializer
