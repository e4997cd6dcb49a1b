"""The one translator from any exception to a gRPC status.

Servicers and repositories raise the domain errors of `service.storage.errors` (or let
database exceptions escape); `translate_errors`, the innermost handler layer, turns them
into a `google.rpc.Status` with ErrorInfo (AIP-193), BadRequest for invalid requests and
RetryInfo when overloaded. Nothing else in the service picks status codes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.api.call_context import request_id_metadata
from service.api.handler_layers import replace_behavior
from service.storage.errors import (
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    to_service_error,
)

DOMAIN = "taskmanager.v1"
log = logging.getLogger(__name__)


def to_rpc_status(error: ServiceError) -> grpc.Status:
    """Build the google.rpc.Status (ErrorInfo, BadRequest) for a service error."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    details = [_pack(info)]
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad_request))
    if isinstance(error, ResourceExhausted):
        retry_info = error_details_pb2.RetryInfo()
        retry_info.retry_delay.FromNanoseconds(round(error.retry_delay * 1e9))
        details.append(_pack(retry_info))
    status = status_pb2.Status(
        code=code_pb2.Code.Value(error.code), message=error.message, details=details
    )
    return rpc_status.to_status(status)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> None:
    """End the RPC with the status for `error`; log what the client must not see."""
    service_error = to_service_error(error)
    if service_error.code == "INTERNAL":
        log.error("unexpected error", exc_info=error)
    elif service_error is not error:
        log.warning("%s: %s", service_error.reason, error)
    status = to_rpc_status(service_error)
    # Passing trailers replaces any set before, so the request id must ride along.
    trailers = (*status.trailing_metadata, *request_id_metadata())
    await context.abort(status.code, status.details, trailers)


Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _guard_unary(behavior: Handler) -> Handler:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:  # noqa: BLE001 - this IS the one translator
            await abort_with(context, error)

    return guarded


def _guarded(behavior: Any) -> Any:
    # A streaming handler is an async generator, or a coroutine that sends with
    # context.write() (like Health.Watch), as unary handlers are. Keep the shape.
    if not inspect.isasyncgenfunction(behavior):
        return _guard_unary(behavior)

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for response in behavior(request, context):
                yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:  # noqa: BLE001 - this IS the one translator
            await abort_with(context, error)

    return guarded


def translate_errors(_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler layer that turns whatever its behaviour raises into a gRPC status."""
    return replace_behavior(handler, _guarded)
