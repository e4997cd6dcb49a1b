"""The change feed's pure parts: cursors, relevance to a filter, a watcher's bounded queue."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from service.api.cursors import FeedCursors
from service.api.pagination import PageTokens
from service.settings import Settings
from service.storage.change_feed import feed_config
from service.storage.errors import InvalidArgument
from service.storage.feed_events import (
    STATE_KEYS,
    FeedPosition,
    feed_event,
    relevance,
    state_values,
    task_state,
)
from service.storage.feed_watcher import Chunk, EndReason, FeedWatcher, is_expired
from service.storage.filters import TaskFilter
from service.storage.keyset import Ordering, Position, int_field
from service.storage.models import NewTask, Task, TaskPriority, TaskStatus
from service.storage.repositories.tasks import BASIC_KEYS

NOW = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def test_a_cursor_round_trips_and_is_the_same_for_the_same_position() -> None:
    cursors = FeedCursors("secret")
    position = FeedPosition(123, 2**63 - 1)
    assert cursors.decode(cursors.encode(position)) == position
    assert cursors.encode(position) == cursors.encode(position), "comparable for equality"
    assert len(cursors.encode(position)) < 60
    assert cursors.encode(position) != cursors.encode(FeedPosition(124, 2**63 - 1))


@pytest.mark.parametrize("damage", ["", "x", "tampered", "a" * 44])
def test_damaged_or_foreign_cursors_are_invalid_argument(damage: str) -> None:
    cursors = FeedCursors("secret")
    good = cursors.encode(FeedPosition(1, 1))
    for cursor in (damage, good[:-2] + damage[:2], FeedCursors("other").encode(FeedPosition(1, 1))):
        with pytest.raises(InvalidArgument) as raised:
            cursors.decode(cursor)
        assert raised.value.reason == "INVALID_CURSOR"
        assert raised.value.violations[0].field == "start_cursor"


def test_a_page_token_is_not_a_cursor() -> None:
    token = PageTokens("secret").encode(
        "q", Ordering("id", int_field(Task.id), False), Position(1, 1)
    )
    with pytest.raises(InvalidArgument):
        FeedCursors("secret").decode(token)


def _task(**fields: object) -> NewTask:
    values: dict[str, object] = {
        "project_id": 1,
        "title": "t",
        "description": "",
        "status": TaskStatus.PENDING,
        "priority": TaskPriority.MEDIUM,
        "tags": ["red"],
        "assignee_id": None,
        "parent_task_id": None,
        "create_time": NOW,
        "update_time": NOW,
    }
    return NewTask(**{**values, **fields})  # type: ignore[arg-type]


def test_a_stored_state_gives_back_the_tasks_columns() -> None:
    task = _task(delete_time=NOW, assignee_id=7)
    state = task_state(task)
    assert set(state) == set(STATE_KEYS)
    row = state_values(42, state, BASIC_KEYS)
    assert row == (42, *(getattr(task, key) for key in BASIC_KEYS[1:]))


def _event(action: str, after: NewTask, changes: dict[str, dict[str, object]]):  # type: ignore[no-untyped-def]
    return feed_event(
        FeedPosition(1, 1), 9, action, "a", NOW, changes, task_state(after), row_keys=BASIC_KEYS
    )


def test_a_change_that_takes_a_task_out_of_the_filter_says_so() -> None:
    done = TaskFilter(statuses=(TaskStatus.DONE,))
    into = _event(
        "update", _task(status=TaskStatus.DONE), {"status": {"old": "PENDING", "new": "DONE"}}
    )
    out_of = _event("update", _task(), {"status": {"old": "DONE", "new": "PENDING"}})
    elsewhere = _event("update", _task(title="x"), {"title": {"old": "t", "new": "x"}})
    assert relevance(done, into) == (True, False)
    assert relevance(done, out_of) == (True, True)
    assert relevance(done, elsewhere) == (False, False)
    assert out_of.changed_fields == ("status",)


def test_a_delete_leaves_the_set_unless_deleted_tasks_are_watched() -> None:
    deleted = _event("delete", _task(delete_time=NOW), {"delete_time": {"old": None, "new": "x"}})
    assert relevance(TaskFilter(), deleted) == (True, True)
    assert relevance(TaskFilter(show_deleted=True), deleted) == (True, False)


@pytest.mark.parametrize(
    ("task_filter", "fields", "expected"),
    [
        (TaskFilter(project_id=1), {}, True),
        (TaskFilter(project_id=2), {}, False),
        (TaskFilter(tags=("red",)), {}, True),
        (TaskFilter(tags=("red", "blue")), {}, False),
        (TaskFilter(unassigned=True), {"assignee_id": 3}, False),
        (TaskFilter(assignee_id=3), {"assignee_id": 3}, True),
        (TaskFilter(top_level_only=True), {"parent_task_id": 5}, False),
        (TaskFilter(parent_task_id=5), {"parent_task_id": 5}, True),
        (TaskFilter(priorities=(TaskPriority.HIGH,)), {"priority": TaskPriority.HIGH}, True),
        (TaskFilter(priorities=(TaskPriority.HIGH,)), {}, False),
    ],
)
def test_creates_are_delivered_when_the_task_matches(
    task_filter: TaskFilter, fields: dict[str, object], expected: bool
) -> None:
    created = _event("create", _task(**fields), {})
    assert relevance(task_filter, created) == (expected, False)


def _chunk(*seqs: int) -> Chunk:
    event = _event("create", _task(), {})
    return Chunk([(_at(event, seq), False) for seq in seqs])


def _at(event, seq: int):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(event, position=FeedPosition(seq, 1))


def test_a_watcher_is_cut_off_beyond_its_capacity_and_keeps_what_it_had() -> None:
    watcher = FeedWatcher(TaskFilter(), FeedPosition(0, 0), FeedPosition(0, 0), capacity=3)
    watcher.offer(_chunk(1, 2), FeedPosition(2, 1))
    assert watcher.queued == 2
    watcher.offer(_chunk(3, 4), FeedPosition(4, 1))
    assert watcher.ended is EndReason.OVERFLOW
    assert not watcher.drained_at_end
    assert watcher.queue == type(watcher.queue)(), "queued events are freed"


def test_a_watcher_skips_what_it_already_has_and_takes_whole_chunks() -> None:
    watcher = FeedWatcher(TaskFilter(), FeedPosition(2, 1), FeedPosition(0, 0), capacity=100)
    watcher.offer(_chunk(1, 2, 3), FeedPosition(3, 1))
    watcher.offer(_chunk(4, 5), FeedPosition(5, 1))
    watcher.offer(_chunk(6, 7, 8), FeedPosition(8, 1))
    taken = watcher.take(limit=4)
    assert [[e.position.seq for e, _ in chunk.events] for chunk in taken] == [[3], [4, 5]]
    assert watcher.seen == FeedPosition(8, 1)
    assert [c.last.seq for c in watcher.take(limit=1)] == [8], "at least one chunk"


def test_a_position_inside_the_horizons_commit_has_expired() -> None:
    assert is_expired(FeedPosition(4, 1), 5)
    assert is_expired(FeedPosition(5, 1), 5)
    assert not is_expired(FeedPosition.after_commit(5), 5)
    assert not is_expired(FeedPosition(6, 1), 5)


async def test_a_quiet_wait_times_out_and_an_offer_ends_a_wait_at_once() -> None:
    watcher = FeedWatcher(TaskFilter(), FeedPosition(0, 0), FeedPosition(0, 0), capacity=100)
    assert await watcher.wait(0.01) is False, "nothing came"
    waiting = asyncio.ensure_future(watcher.wait(60))
    await asyncio.sleep(0)
    watcher.offer(_chunk(1), FeedPosition(1, 1))
    assert await waiting is True
    watcher.take(limit=10)
    # After busy waits, a quiet one still times out.
    for seq in range(2, 6):
        waiting = asyncio.ensure_future(watcher.wait(0.05))
        await asyncio.sleep(0)
        watcher.offer(_chunk(seq), FeedPosition(seq, 1))
        assert await waiting is True
        watcher.take(limit=10)
    assert await watcher.wait(0.01) is False


def test_the_feed_listens_over_the_session_url() -> None:
    settings = Settings(
        database_url="postgresql://app@pgbouncer:6432/tasks",
        database_pooler="transaction",
        session_database_url="postgresql://app@db:5432/tasks",
    )
    listen_dsn = feed_config(settings).listen_dsn
    assert listen_dsn is not None
    assert listen_dsn.startswith("postgresql://app@db:5432/tasks")
    assert feed_config(Settings(database_url="postgresql://app@db/tasks")).listen_dsn == (
        "postgresql://app@db/tasks"
    )
