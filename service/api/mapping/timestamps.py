"""google.protobuf.Timestamp <-> timezone-aware UTC datetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
# datetime's last microsecond (9999-12-31T23:59:59.999999), in microseconds since the epoch.
_LATEST_MICROS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def is_valid_timestamp(value: Timestamp) -> bool:
    """Whether `value` lies in Timestamp's range with nanos in [0, 1e9)."""
    return _MIN_SECONDS <= value.seconds <= _MAX_SECONDS and 0 <= value.nanos < 1_000_000_000


def to_timestamp(value: datetime, target: Timestamp) -> None:
    """Write `value` into `target` (integer arithmetic: exact and cheap)."""
    delta = value - _EPOCH
    target.seconds = delta.days * 86_400 + delta.seconds
    target.nanos = delta.microseconds * 1_000


def from_timestamp(value: Timestamp) -> datetime:
    """The UTC datetime of a Timestamp, to the microsecond (sub-microseconds dropped)."""
    return value.ToDatetime(tzinfo=UTC)


def from_timestamp_ceil(value: Timestamp) -> datetime:
    """The UTC datetime of a Timestamp rounded UP to the microsecond.

    Stored times have microsecond precision, so for a stored time x and a bound
    T: x >= T iff x >= ceil(T), and x < T iff x < ceil(T). Query bounds use this.
    `value` must be valid (`is_valid_timestamp`): its ceiling is then at least
    0001-01-01, and only the last nanoseconds of 9999-12-31, whose ceiling datetime
    cannot hold, are clamped to datetime's last microsecond (no stored time is there).
    """
    micros = -(-value.ToNanoseconds() // 1_000)
    return _EPOCH + timedelta(microseconds=min(micros, _LATEST_MICROS))
