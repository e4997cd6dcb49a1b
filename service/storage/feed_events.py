"""Change-feed events: positions, a task's stored state, and filter matching in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from service.storage.filters import TaskFilter
from service.storage.models import AnyTask, Task, TaskPriority, TaskStatus

# The event id of a position that covers a whole commit (bookmarks, heads).
WHOLE_COMMIT = 2**63 - 1
# Task columns an event's state holds (the id is the event's entity_id).
STATE_KEYS = tuple(c.key for c in Task.__table__.columns if c.key != "id")  # type: ignore[attr-defined]
_TIME_KEYS = frozenset(key for key in STATE_KEYS if key.endswith("_time"))
ACTIONS = ("create", "update", "delete", "undelete")


class FeedPosition(NamedTuple):
    """A place in the feed: the commit's sequence number and the event's id within it.

    Commits are numbered in commit order (PostgreSQL: feed_commits.seq; SQLite: the
    event id, as its one writer commits in id order). Tuples compare in feed order.
    """

    seq: int
    event_id: int

    @classmethod
    def after_commit(cls, seq: int) -> FeedPosition:
        """The position right after every event of commit `seq` (a bookmark)."""
        return cls(seq, WHOLE_COMMIT)


def task_state(task: AnyTask) -> dict[str, Any]:
    """A task's columns (but its id) as JSON values: what a task event stores."""
    return {key: _json(getattr(task, key)) for key in STATE_KEYS}


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, TaskStatus):
        return value.value
    if isinstance(value, TaskPriority):
        return int(value)
    if isinstance(value, list):
        return list(value)
    return value


def state_values(task_id: int, state: dict[str, Any], keys: tuple[str, ...]) -> tuple[Any, ...]:
    """A stored state as a row of `keys` (a column tuple such as the BASIC view's)."""
    return tuple(task_id if key == "id" else _column_value(key, state.get(key)) for key in keys)


def _column_value(key: str, value: Any) -> Any:
    if value is not None and key in _TIME_KEYS:
        return datetime.fromisoformat(value)
    if key == "status":
        return TaskStatus(value)
    return value


@dataclass(slots=True)
class FeedEvent:
    """One committed change of a task, as the feed delivers it."""

    position: FeedPosition
    task_id: int
    action: str
    actor: str
    commit_time: datetime
    changed_fields: tuple[str, ...]
    state: dict[str, Any]  # right after the change
    before: dict[str, Any] | None  # right before it; None for a create
    row: tuple[Any, ...]  # the state as a row of the BASIC view's columns (for mapping)
    # The edge's encodings of this event (messages, cursor), made once and shared by
    # every watcher it goes to; storage never reads it.
    memo: dict[Any, Any] = field(default_factory=dict)


def feed_event(
    position: FeedPosition,
    task_id: int,
    action: str,
    actor: str,
    commit_time: datetime,
    changes: dict[str, dict[str, Any]],
    state: dict[str, Any],
    *,
    row_keys: tuple[str, ...],
) -> FeedEvent:
    """An event from its audit row: the state before is the state after with the old
    value of every changed field (changes name every audited field that changed)."""
    before = None
    if action != "create":
        before = {**state, **{name: change["old"] for name, change in changes.items()}}
    row = state_values(task_id, state, row_keys)
    return FeedEvent(
        position, task_id, action, actor, commit_time, tuple(sorted(changes)), state, before, row
    )


def matches(task_filter: TaskFilter, state: dict[str, Any]) -> bool:
    """Whether a task in this state matches the filter; the same rules as the SQL of
    TaskRepository for the fields a watch can filter on."""
    f = task_filter
    return (
        (f.show_deleted or state["delete_time"] is None)
        and (f.project_id is None or state["project_id"] == f.project_id)
        and (not f.statuses or state["status"] in f.statuses)
        and (not f.priorities or state["priority"] in f.priorities)
        and (f.assignee_id is None or state["assignee_id"] == f.assignee_id)
        and (not f.unassigned or state["assignee_id"] is None)
        and (f.parent_task_id is None or state["parent_task_id"] == f.parent_task_id)
        and (not f.top_level_only or state["parent_task_id"] is None)
        and all(tag in state["tags"] for tag in f.tags)
        and (f.creator_id is None or state["creator_id"] == f.creator_id)
    )


class Relevance(NamedTuple):
    """Whether a watcher gets an event, and whether the event takes the task out of its set."""

    delivered: bool
    no_longer_matches: bool


def relevance(task_filter: TaskFilter, event: FeedEvent) -> Relevance:
    """An event goes to a watcher whose filter the task matches after the change, or
    matched before it (then saying the task left the watched set): mirrors stay exact."""
    after = matches(task_filter, event.state)
    before = event.before is not None and matches(task_filter, event.before)
    return Relevance(after or before, before and not after)
