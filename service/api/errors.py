"""Domain errors and the one translator from any exception to a gRPC status.

Servicers and repositories raise the domain errors below (or let database
exceptions escape); `translate_errors`, the innermost handler layer, turns them into a
`google.rpc.Status` with ErrorInfo (AIP-193) and, for invalid requests,
BadRequest. Nothing else in the service picks status codes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import exc as orm_exc

from service.api.handler_layers import replace_behavior
from service.runtime.logs import request_id_metadata

DOMAIN = "taskmanager.v1"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path as in the request and what is wrong with it."""

    field: str
    description: str
    reason: str = "INVALID_FIELD"


class ServiceError(Exception):
    """An error the client should see: a status code, a reason and details."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {key: str(value) for key, value in metadata.items()}


MAX_REPORTED = 30


class InvalidArgument(ServiceError):
    """The request itself is wrong; lists every field violation at once."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        violations: list[FieldViolation],
        reason: str = "INVALID_ARGUMENT",
        message: str | None = None,
    ) -> None:
        # Status details travel in a trailer, which clients cap (8 KiB soft, 16 KiB
        # hard): report at most MAX_REPORTED violations, and say how many were left out.
        reported = violations[:MAX_REPORTED]
        fields = ", ".join(v.field for v in reported[:10])
        more = len(violations) - min(len(violations), 10)
        if more:
            fields += f" and {more} more"
        super().__init__(reason, message or f"invalid request: {fields}", fields=fields)
        if len(violations) > MAX_REPORTED:
            omitted = len(violations) - MAX_REPORTED
            reported = [
                *reported,
                FieldViolation("", f"{omitted} more violations not listed", "TRUNCATED"),
            ]
        self.violations = reported


class NotFound(ServiceError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """A resource with the same unique key already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The system is not in the state the request needs (missing reference, children)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    """A concurrency conflict; the client should re-read and retry."""

    code = grpc.StatusCode.ABORTED


class Unavailable(ServiceError):
    """The service cannot answer now; retrying later (elsewhere) may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed first; the database cancelled the statement."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServiceError):
    """The caller sent no credentials, or ones the service does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The caller is known but may not make this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


@contextmanager
def at_index(index: int) -> Iterator[None]:
    """Name the batch item a domain error is about (metadata `index`, message prefix)."""
    try:
        yield
    except ServiceError as error:
        if isinstance(error, InvalidArgument):
            raise
        error.metadata["index"] = str(index)
        error.message = f"requests[{index}]: {error.message}"
        error.args = (error.message,)
        raise


# Unique constraints by name (see the naming convention in models.py).
_UNIQUE_REASONS = {
    "uq_projects_name": ("PROJECT_NAME_TAKEN", "a project with this name already exists"),
    "uq_workers_email": ("WORKER_EMAIL_TAKEN", "a worker with this email already exists"),
}
# PostgreSQL SQLSTATE classes that mean "the database is not reachable now".
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P")
_ABORTED_SQLSTATES = {"40001", "40P01"}
# query_canceled: statement_timeout, set from the RPC deadline (see database.py), fired.
_QUERY_CANCELED = "57014"


def to_service_error(error: BaseException) -> ServiceError:
    """Classify any exception; unknown ones become a generic INTERNAL."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, orm_exc.StaleDataError):
        return Aborted("CONCURRENT_UPDATE", "the resource changed concurrently; re-read and retry")
    if isinstance(error, sa_exc.IntegrityError):
        return _integrity_error(error)
    if isinstance(error, sa_exc.DBAPIError) and _sqlstate(error) == _QUERY_CANCELED:
        return DeadlineExceeded("DEADLINE_EXCEEDED", "the deadline passed before the query ended")
    if _is_unavailable(error):
        return Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry later")
    if isinstance(error, sa_exc.DBAPIError) and _sqlstate(error) in _ABORTED_SQLSTATES:
        return Aborted("TRANSACTION_CONFLICT", "a concurrent transaction conflicted; retry")
    return ServiceError("INTERNAL", "internal error")


def _sqlstate(error: sa_exc.DBAPIError) -> str:
    orig = error.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return str(code or "")


def _constraint_name(error: sa_exc.IntegrityError) -> str:
    cause = getattr(error.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None) or getattr(error.orig, "constraint_name", None)
    if name:
        return str(name)
    # SQLite names the columns instead: "UNIQUE constraint failed: projects.name".
    match = re.search(r"UNIQUE constraint failed: (\w+)\.(\w+)", str(error.orig))
    return f"uq_{match.group(1)}_{match.group(2)}" if match else ""


def _integrity_error(error: sa_exc.IntegrityError) -> ServiceError:
    text = str(error.orig)
    state = _sqlstate(error)
    if state == "23505" or "UNIQUE constraint failed" in text:
        constraint = _constraint_name(error)
        reason, message = _UNIQUE_REASONS.get(
            constraint, ("RESOURCE_ALREADY_EXISTS", "the resource already exists")
        )
        return AlreadyExists(reason, message, constraint=constraint)
    if state == "23503" or "FOREIGN KEY constraint failed" in text:
        # Repositories check references first; this is the concurrent-change case.
        return FailedPrecondition(
            "REFERENCE_CONFLICT",
            "a referenced resource is missing or still referenced; re-read and retry",
        )
    return ServiceError("INTERNAL", "internal error")


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(error, OSError | TimeoutError | sa_exc.TimeoutError):
        return True  # connection refused / reset, pool checkout timeout
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
            return True
        if isinstance(error, sa_exc.OperationalError) and not _sqlstate(error):
            return True  # SQLite: database locked / unable to open
        return _sqlstate(error).startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
    cause = error.__cause__
    return cause is not None and cause is not error and _is_unavailable(cause)


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
    status = status_pb2.Status(code=_CODES[error.code], message=error.message, details=details)
    return rpc_status.to_status(status)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


_CODES: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED: code_pb2.ABORTED,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
}


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> None:
    """End the RPC with the status for `error`; log what the client must not see."""
    service_error = to_service_error(error)
    if service_error.code is grpc.StatusCode.INTERNAL:
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
