"""The one translator from any exception to a gRPC status.

Servicers and repositories raise the domain errors of `service.storage.errors` (or let
database exceptions escape); `translate_errors`, the innermost handler layer, turns them
into a `google.rpc.Status` with ErrorInfo (AIP-193), BadRequest for invalid requests and
RetryInfo when overloaded, cut to the size budget below. Nothing else in the service picks
status codes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.api.call_context import request_id_metadata
from service.api.handler_layers import replace_behavior
from service.storage.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unimplemented,
    echoed,
    to_service_error,
)

DOMAIN = "taskmanager.v1"
log = logging.getLogger(__name__)

# The status travels in trailers: grpc-message (percent-encoded, up to 3 bytes on the
# wire per byte) and grpc-status-details-bin (base64, 4 bytes per 3). gRPC clients drop
# trailers above 8 KiB at random and all above 16 KiB by default (the call then fails
# RESOURCE_EXHAUSTED "Stream removed", without the status), and errors echo what the
# client sent. So every status is cut here, once: at most MESSAGE_BYTES of message,
# TEXT_BYTES per other string, MAX_METADATA ErrorInfo entries, MAX_VIOLATIONS field
# violations, and STATUS_BYTES for the whole serialized google.rpc.Status. Worst case on
# the wire: 1,536 (message) + 2,732 (details) + 128 (x-request-id) + names, under 4.5 KiB.
MESSAGE_BYTES = 512
TEXT_BYTES = 200
KEY_BYTES = 64
MAX_METADATA = 8
MAX_VIOLATIONS = 30
STATUS_BYTES = 2048
# Room kept for the "N more violations not listed" entry and varints that grow.
_RESERVE = 96
# Framing of one map entry or repeated message: tags and length varints (UTF-8 sizes
# above are at most 3 digits of varint each).
_FRAMING = 12


def clip(text: str, limit: int) -> str:
    """`text` if its UTF-8 is at most `limit` bytes, else its start, marked as cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    marker = f"…[{len(text)} chars]"
    keep = data[: max(limit - len(marker.encode()), 0)].decode("utf-8", "ignore")
    return keep + marker


def to_rpc_status(error: ServiceError) -> grpc.Status:
    """Build the google.rpc.Status (ErrorInfo, BadRequest) for a service error, in budget."""
    return rpc_status.to_status(bounded_status(error))


def bounded_status(error: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status of `error`, at most STATUS_BYTES serialized."""
    info = error_details_pb2.ErrorInfo(reason=clip(error.reason, KEY_BYTES), domain=DOMAIN)
    violations = error.violations if isinstance(error, InvalidArgument) else None
    bad_request = None if violations is None else error_details_pb2.BadRequest()
    status = status_pb2.Status(
        code=code_pb2.Code.Value(error.code), message=clip(error.message, MESSAGE_BYTES)
    )
    retry = _retry_info(error)
    remaining = STATUS_BYTES - _RESERVE - _assembled(status, info, bad_request, retry).ByteSize()
    for key, value in list(error.metadata.items())[:MAX_METADATA]:
        key, value = clip(key, KEY_BYTES), clip(value, TEXT_BYTES)
        cost = len(key.encode()) + len(value.encode()) + _FRAMING
        if cost <= remaining:
            info.metadata[key] = value
            remaining -= cost
    if bad_request is not None and violations is not None:
        for violation in violations[:MAX_VIOLATIONS]:
            entry = _field_violation(violation)
            cost = entry.ByteSize() + _FRAMING
            if cost > remaining:
                break
            bad_request.field_violations.append(entry)
            remaining -= cost
        omitted = len(violations) - len(bad_request.field_violations)
        if omitted:
            bad_request.field_violations.append(
                _field_violation(
                    FieldViolation("", f"{omitted} more violations not listed", "TRUNCATED")
                )
            )
    return _assembled(status, info, bad_request, retry)


def _retry_info(error: ServiceError) -> error_details_pb2.RetryInfo | None:
    """When to try again, for an overloaded server's refusal (AIP-194)."""
    if not isinstance(error, ResourceExhausted) or error.retry_delay is None:
        return None
    retry_info = error_details_pb2.RetryInfo()
    retry_info.retry_delay.FromNanoseconds(round(error.retry_delay * 1e9))
    return retry_info


def _field_violation(violation: FieldViolation) -> error_details_pb2.BadRequest.FieldViolation:
    return error_details_pb2.BadRequest.FieldViolation(
        field=clip(violation.field, TEXT_BYTES),
        description=clip(violation.description, TEXT_BYTES),
        reason=clip(violation.reason, KEY_BYTES),
    )


def _assembled(
    status: status_pb2.Status,
    info: error_details_pb2.ErrorInfo,
    bad_request: error_details_pb2.BadRequest | None,
    retry: error_details_pb2.RetryInfo | None = None,
) -> status_pb2.Status:
    details = [d for d in (info, bad_request, retry) if d is not None]
    assembled = status_pb2.Status(code=status.code, message=status.message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        assembled.details.append(packed)
    return assembled


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


class MalformedRequest:
    """Stands in for a request message whose bytes did not parse."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            [FieldViolation("", f"not a valid {self.message_name} message", "MALFORMED_REQUEST")],
            reason="MALFORMED_REQUEST",
            message=f"the request is not a valid {self.message_name} message",
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns MalformedRequest instead of raising.

    grpc would answer a request that does not parse UNKNOWN, with the parser's exception
    text and no details; the handler below answers it INVALID_ARGUMENT instead.
    """
    if deserializer is None:
        return None
    name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    message_name = name.full_name if name is not None else "request"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - DecodeError, or invalid UTF-8 in a string
            return MalformedRequest(message_name)

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, MalformedRequest):
            raise request.error()
        yield request


def _parsed(request: Any) -> Any:
    if isinstance(request, MalformedRequest):
        raise request.error()
    if hasattr(request, "__aiter__"):  # a client stream: check each message as it comes
        return _checked(request)
    return request


Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _guard_unary(behavior: Handler) -> Handler:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(_parsed(request), context)
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
            async for response in behavior(_parsed(request), context):
                yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:  # noqa: BLE001 - this IS the one translator
            await abort_with(context, error)

    return guarded


def translate_errors(_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler layer that turns whatever its behaviour raises into a gRPC status."""
    handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
    return replace_behavior(handler, _guarded)


class UnknownMethods(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Registered last: answers a method no service has UNIMPLEMENTED with ErrorInfo
    (grpc's own answer carries none). It bypasses the other layers on purpose: metrics
    labelled with whatever path a client makes up would grow without bound."""

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method

        async def unknown(_requests: Any, _context: Any) -> AsyncIterator[Any]:
            raise Unimplemented(
                "METHOD_NOT_FOUND", f"no method {echoed(method)} on this server", method=method
            )
            yield  # an async generator: a handler for calls of every kind

        return translate_errors(method, grpc.stream_stream_rpc_method_handler(unknown))
