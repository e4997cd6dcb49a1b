"""The errors the domain raises, and the classification of database exceptions into them.

Repositories, validation and servicers raise these; each names its canonical code
(google.rpc.Code, AIP-193) but knows nothing of gRPC: `service.api.errors` is the one
translator from them to a gRPC status.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from asyncpg.exceptions import TargetServerAttributeNotMatched
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import exc as orm_exc


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path as in the request and what is wrong with it."""

    field: str
    description: str
    reason: str = "INVALID_FIELD"


ECHO_CHARS = 40


def echoed(value: str) -> str:
    """A value the client sent, quoted for an error message; long ones are shortened
    (the translator bounds every error anyway; this keeps the rest of a message readable)."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}… ({len(value)} characters)"


class ServiceError(Exception):
    """An error the client should see: a canonical code (google.rpc.Code name), reason, details."""

    code = "INTERNAL"

    def __init__(self, reason: str, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {key: str(value) for key, value in metadata.items()}


class InvalidArgument(ServiceError):
    """The request itself is wrong; lists every field violation at once.

    The translator (service.api.errors) cuts what reaches the client to its size budget.
    """

    code = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: list[FieldViolation],
        reason: str = "INVALID_ARGUMENT",
        message: str | None = None,
    ) -> None:
        fields = ", ".join(v.field for v in violations[:10])
        more = len(violations) - min(len(violations), 10)
        if more:
            fields += f" and {more} more"
        super().__init__(reason, message or f"invalid request: {fields}", fields=fields)
        self.violations = violations


class NotFound(ServiceError):
    """The named resource does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(ServiceError):
    """A resource with the same unique key already exists."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    """The system is not in the state the request needs (missing reference, children)."""

    code = "FAILED_PRECONDITION"


class Aborted(ServiceError):
    """A concurrency conflict; the client should re-read and retry."""

    code = "ABORTED"


class Unavailable(ServiceError):
    """The service cannot answer now; retrying later (elsewhere) may succeed."""

    code = "UNAVAILABLE"


class ResourceExhausted(ServiceError):
    """Overloaded (retry after `retry_delay` seconds), or a per-caller resource ran out
    (retry_delay None: e.g. a watcher's buffer, which resumes from its cursor)."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(
        self, reason: str, message: str, *, retry_delay: float | None = None, **metadata: object
    ) -> None:
        super().__init__(reason, message, **metadata)
        self.retry_delay = retry_delay


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed first; the database cancelled the statement."""

    code = "DEADLINE_EXCEEDED"


class Unauthenticated(ServiceError):
    """The caller sent no credentials, or ones the service does not know."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """The caller is known but may not make this call."""

    code = "PERMISSION_DENIED"


class Unimplemented(ServiceError):
    """The server has no such method."""

    code = "UNIMPLEMENTED"


class OutOfRange(ServiceError):
    """The request points outside what is kept (e.g. a change-feed cursor past retention)."""

    code = "OUT_OF_RANGE"


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
# PostgreSQL SQLSTATE classes that mean "the database is not reachable now" (PgBouncer
# reports its own failures as 08P01), and read_only_sql_transaction: a write reached a
# standby or a demoted primary, as happens during a failover.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P", "25006")
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


# SQLite primary result codes that mean "the database cannot be used now": BUSY, LOCKED,
# NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB. Any other
# OperationalError (SQLITE_ERROR: a statement it refused) is no outage.
_SQLITE_UNAVAILABLE = {5, 6, 7, 8, 10, 11, 13, 14, 15, 26}


def _sqlite_unavailable(orig: BaseException | None) -> bool:
    code = getattr(orig, "sqlite_errorcode", None)
    return code is None or code & 0xFF in _SQLITE_UNAVAILABLE


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether `error` or an exception it was raised from is a `kind` (drivers wrap them)."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__
    return False


def _is_unavailable(error: BaseException) -> bool:
    if isinstance(error, OSError | TimeoutError | sa_exc.TimeoutError):
        return True  # connection refused / reset, pool checkout timeout
    if _caused_by(error, TargetServerAttributeNotMatched):
        return True  # a multi-host URL found no primary (yet): a failover is under way
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
            return True
        if isinstance(error, sa_exc.OperationalError) and not _sqlstate(error):
            return _sqlite_unavailable(error.orig)
        return _sqlstate(error).startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
    cause = error.__cause__
    return cause is not None and cause is not error and _is_unavailable(cause)
