"""WAL positions, replica lag and the failover errors, without a database."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from service.api.pagination import PageTokens
from service.storage.errors import to_service_error
from service.storage.keyset import Ordering, Position, int_field
from service.storage.models import Task
from service.storage.replicas import PrimaryHistory, format_lsn, parse_lsn


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/0", 0), ("0/16B3748", 0x16B3748), ("16/B374D848", (0x16 << 32) | 0xB374D848)],
)
def test_lsns_read_and_write_as_postgresql_does(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text


@pytest.mark.parametrize("text", ["", "16", "16/", "/1", "-1/0", "1/G", "123456789/0", " 0/1"])
def test_anything_else_is_no_lsn(text: str) -> None:
    with pytest.raises(ValueError, match="not a WAL position"):
        parse_lsn(text)


def test_lag_is_the_age_of_the_oldest_primary_position_not_replayed() -> None:
    history = PrimaryHistory(keep_seconds=10)
    history.add(100, at=1.0)
    history.add(200, at=2.0)
    history.add(300, at=3.0)
    assert history.lag_of(300, now=5.0) == 0.0  # replayed everything the primary had
    assert history.lag_of(250, now=5.0) == 2.0  # missing what the primary had at 3.0
    assert history.lag_of(50, now=5.0) == 4.0
    assert history.latest == 300


def test_history_forgets_samples_past_its_window_but_keeps_the_latest() -> None:
    history = PrimaryHistory(keep_seconds=1)
    history.add(100, at=1.0)
    history.add(200, at=5.0)
    assert history.lag_of(150, now=6.0) == 1.0  # the 1.0 sample is gone
    history.add(300, at=60.0)
    assert history.latest == 300


def test_page_tokens_carry_the_read_position_and_old_tokens_still_decode() -> None:
    tokens = PageTokens("secret")
    ordering = Ordering("id", int_field(Task.id), False)
    with_position = tokens.encode("q", ordering, Position(7, 7), read_at=12345)
    without = tokens.encode("q", ordering, Position(7, 7))
    assert tokens.decode_read(with_position, "q", ordering, "page_token") == (Position(7, 7), 12345)
    assert tokens.decode_read(without, "q", ordering, "page_token") == (Position(7, 7), None)
    assert tokens.decode(with_position, "q", ordering, "page_token") == Position(7, 7)


def _as_sqlalchemy_error(error: Exception) -> sa_exc.DBAPIError:
    """How SQLAlchemy's asyncpg dialect hands a driver error up: wrapped twice."""
    wrapped = sa_exc.InternalError("statement", None, error)
    wrapped.__cause__ = error
    return wrapped


def test_no_primary_among_the_hosts_is_unavailable_however_wrapped() -> None:
    error = asyncpg.exceptions.TargetServerAttributeNotMatched("None of the hosts match")
    assert to_service_error(error).code == "UNAVAILABLE"
    assert to_service_error(_as_sqlalchemy_error(error)).code == "UNAVAILABLE"


def test_a_write_on_a_read_only_server_is_unavailable() -> None:
    error = asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction")
    assert to_service_error(sa_exc.InternalError("INSERT", None, error)).code == "UNAVAILABLE"
