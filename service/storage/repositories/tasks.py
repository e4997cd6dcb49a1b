"""SQL for tasks: filters, eager loading for views, reference and tree checks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    null,
    or_,
)
from sqlalchemy.orm import joinedload, selectinload
from sqlalchemy.sql.base import ExecutableOption
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.storage.errors import Aborted, FailedPrecondition
from service.storage.feed_events import task_state
from service.storage.filters import TaskFilter
from service.storage.keyset import Ordering, Position
from service.storage.models import (
    AnyTask,
    AuditEvent,
    NewTask,
    Project,
    Task,
    Worker,
)
from service.storage.repositories.audit import EVENT_KEYS, INSERT_EVENTS, AuditValues
from service.storage.repositories.base import Page, Repository
from service.storage.repositories.task_filters import task_conditions

# TASK_VIEW_FULL: the project, assignee and creator (many-to-one) joined into the
# task's own SELECT; the direct subtasks (one-to-many) by one more SELECT per page.
FULL_VIEW: tuple[ExecutableOption, ...] = (
    joinedload(Task.project),  # type: ignore[arg-type]
    joinedload(Task.assignee),  # type: ignore[arg-type]
    joinedload(Task.creator),  # type: ignore[arg-type]
    selectinload(Task.subtasks),  # type: ignore[arg-type]
)


# What the BASIC view shows, in the order mapping.tasks.add_task_rows reads it.
BASIC_COLUMNS: tuple[Any, ...] = (
    col(Task.id),
    col(Task.project_id),
    col(Task.title),
    col(Task.description),
    col(Task.status),
    col(Task.priority),
    col(Task.tags),
    col(Task.assignee_id),
    col(Task.parent_task_id),
    col(Task.create_time),
    col(Task.update_time),
    col(Task.version),
    col(Task.delete_time),
    col(Task.creator_id),
    col(Task.due_time),
)
BASIC_KEYS = tuple(column.key for column in BASIC_COLUMNS)

# Hot statements, built once with bound parameters and plain Core columns: each call
# skips statement construction, cache-key generation and the ORM compile step, and goes
# straight to the compiled-statement and prepared-statement caches.
_TASKS_TABLE = Task.__table__  # type: ignore[attr-defined]
# GetTask (BASIC): the one statement.
_ROW_BY_ID = select(*(_TASKS_TABLE.c[key] for key in BASIC_KEYS)).where(
    _TASKS_TABLE.c.id == bindparam("task_id")
)
# Whether a task's project and assignee exist: the one definition, used by CreateTask's
# INSERT and by the query that says which one is missing.
_PROJECT_EXISTS = exists().where(
    Project.__table__.c.id  # type: ignore[attr-defined]
    == bindparam("project_id", type_=_TASKS_TABLE.c.project_id.type)
)
_ASSIGNEE_ID = bindparam("assignee_id", type_=_TASKS_TABLE.c.assignee_id.type)
_ASSIGNEE_EXISTS = exists().where(Worker.__table__.c.id == _ASSIGNEE_ID)  # type: ignore[attr-defined]
_CREATOR_ID = bindparam("creator_id", type_=_TASKS_TABLE.c.creator_id.type)
_CREATOR_EXISTS = exists().where(Worker.__table__.c.id == _CREATOR_ID)  # type: ignore[attr-defined]
# Which references exist, when a create inserted nothing: one round trip.
_REFERENCES_EXIST: Select[Any] = select(_PROJECT_EXISTS, _ASSIGNEE_EXISTS, _CREATOR_EXISTS)  # type: ignore[assignment]
# CreateTask: every column but the id, inserted only if the project, the assignee and
# the creator exist (no row otherwise): the reference check costs no round trip of its own.
_INSERT_KEYS = tuple(column.key for column in _TASKS_TABLE.columns if not column.primary_key)
_INSERT_IF_REFERENCES_EXIST = (
    insert(_TASKS_TABLE)
    .from_select(
        _INSERT_KEYS,
        select(*(bindparam(key, type_=_TASKS_TABLE.c[key].type) for key in _INSERT_KEYS)).where(
            _PROJECT_EXISTS,
            or_(_ASSIGNEE_ID.is_(null()), _ASSIGNEE_EXISTS),
            or_(_CREATOR_ID.is_(null()), _CREATOR_EXISTS),
        ),
    )
    .returning(_TASKS_TABLE.c.id)
)
# PostgreSQL: the audit event in the same statement (a data-modifying CTE), so a create
# is one round trip between BEGIN and COMMIT. SQLite has no such CTEs: a second INSERT.
_AUDIT_TABLE = AuditEvent.__table__  # type: ignore[attr-defined]
_new_task = _INSERT_IF_REFERENCES_EXIST.cte("new_task")
_INSERT_AUDITED_IF_REFERENCES_EXIST = INSERT_EVENTS.from_select(
    ("entity_id", *EVENT_KEYS),
    select(
        _new_task.c.id,
        *(bindparam(key, type_=_AUDIT_TABLE.c[key].type) for key in EVENT_KEYS),
    ),
).returning(_AUDIT_TABLE.c.entity_id)


class TaskRepository(Repository[Task]):
    """Tasks by id and by filter."""

    model = Task
    resource = "task"

    def __init__(self, session: AsyncSession) -> None:
        super().__init__(session)
        self._known_references: set[tuple[str, int]] = set()

    async def create(self, task: NewTask, event: AuditValues) -> NewTask:
        """Insert a new task and its audit event; set its id and return it.

        FAILED_PRECONDITION if the project, assignee or parent is missing. Core
        statements: no entity, no session state (identity map, change tracking and
        flush cost more than the round trip).
        """
        if task.parent_task_id is not None:
            # The parent's checks lock it (FOR SHARE) and walk the tree: their own queries.
            await self.check_references(task)
        for _ in range(2):
            new_id = await self._insert_if_references_exist(task, event)
            if new_id is not None:
                task.id = new_id
                return task
            # Nothing inserted: say which reference is missing. If none is (now), it
            # appeared meanwhile: insert again.
            self._known_references.clear()
            await self._check_references(task)
        raise Aborted("REFERENCES_CHANGED", "the task's references changed meanwhile; retry")

    async def _insert_if_references_exist(self, task: NewTask, event: AuditValues) -> int | None:
        values = {key: getattr(task, key) for key in _INSERT_KEYS}
        event = {**event, "state": task_state(task)}
        if self.dialect == "postgresql":
            return await self.insert_returning_id(
                _INSERT_AUDITED_IF_REFERENCES_EXIST, {**values, **event}
            )
        new_id = await self.insert_returning_id(_INSERT_IF_REFERENCES_EXIST, values)
        if new_id is not None:
            await self.execute_core(INSERT_EVENTS, {**event, "entity_id": new_id})
        return new_id

    async def list_page(
        self,
        task_filter: TaskFilter,
        ordering: Ordering,
        after: Position | None,
        limit: int,
        options: Sequence[ExecutableOption] = (),
    ) -> Page[Task]:
        """One keyset page of the tasks matching `task_filter`."""
        statement = select(Task).where(*task_conditions(self, task_filter)).options(*options)
        return await self.page(statement, ordering, after, limit)

    async def list_rows(
        self,
        task_filter: TaskFilter,
        ordering: Ordering,
        after: Position | None,
        limit: int,
        extra_columns: Sequence[ColumnElement[Any]] = (),
    ) -> Page[Sequence[Any]]:
        """One keyset page as plain rows of BASIC_COLUMNS (the fast path of the BASIC view),
        each followed by `extra_columns` (read in the same statement, hence snapshot)."""
        statement = select(*BASIC_COLUMNS, *extra_columns).where(
            *task_conditions(self, task_filter)
        )
        key_index = BASIC_KEYS.index(ordering.field.column.key)
        return await self.page_rows(statement, ordering, after, limit, key_index)

    async def get_rows(self, task_ids: Sequence[int]) -> list[Sequence[Any]]:
        """Rows of BASIC_COLUMNS for `task_ids` in that order (one statement); NOT_FOUND
        naming every missing id."""
        statement = select(*BASIC_COLUMNS).where(self.any_of(col(Task.id), list(set(task_ids))))
        return self.in_order(task_ids, {row[0]: row for row in await self.fetch_rows(statement)})

    async def get_many(
        self, task_ids: Sequence[int], options: Sequence[ExecutableOption] = ()
    ) -> list[Task]:
        """Tasks `task_ids` in that order, loaded with `options`; NOT_FOUND naming every
        missing id."""
        statement = select(Task).where(self.any_of(col(Task.id), list(set(task_ids))))
        found = (await self.session.exec(statement.options(*options))).all()
        return self.in_order(task_ids, {task.id: task for task in found if task.id is not None})

    async def get_row(self, task_id: int) -> Sequence[Any]:
        """One task as a row of BASIC_COLUMNS (one statement); NOT_FOUND if missing."""
        row = await self.fetch_row(_ROW_BY_ID, {"task_id": task_id})
        if row is None:
            raise self.not_found(task_id)
        return row

    async def with_full_view(self, task_ids: Sequence[int]) -> dict[int, Task]:
        """These tasks with what TASK_VIEW_FULL adds (assignee, subtasks), by id."""
        statement = select(Task).where(col(Task.id).in_(task_ids)).options(*FULL_VIEW)
        return {task.id: task for task in (await self.session.exec(statement)).all()}  # type: ignore[misc]

    async def check_references(self, task: AnyTask) -> None:
        """FAILED_PRECONDITION unless project, assignee and parent exist and fit."""
        # No autoflush: a pending change (a new parent) must not reach the database
        # before it is checked, or a foreign key or the cycle walk would see it first.
        with self.session.no_autoflush:
            await self._check_references(task)

    async def _check_references(self, task: AnyTask) -> None:
        project_exists, assignee_exists, creator_exists = await self._references_exist(
            task.project_id, task.assignee_id, task.creator_id
        )
        if not project_exists:
            raise FailedPrecondition(
                "PROJECT_NOT_FOUND",
                f"project {task.project_id} does not exist",
                project_id=task.project_id,
            )
        if not assignee_exists:
            raise FailedPrecondition(
                "ASSIGNEE_NOT_FOUND",
                f"worker {task.assignee_id} does not exist",
                assignee_id=task.assignee_id,
            )
        if not creator_exists:
            raise FailedPrecondition(
                "CREATOR_NOT_FOUND",
                f"worker {task.creator_id} does not exist",
                creator_id=task.creator_id,
            )
        if task.parent_task_id is not None:
            await self._check_parent(task)

    async def _references_exist(
        self, project_id: int, assignee_id: int | None, creator_id: int | None
    ) -> tuple[bool, bool, bool]:
        """Whether the project, the assignee and the creator (if any) exist: one query, at most.

        Remembered for the unit of work, so a batch into one project asks once; a row
        deleted meanwhile still cannot be referenced (the foreign keys hold).
        """
        known = self._known_references
        workers = [worker_id for worker_id in (assignee_id, creator_id) if worker_id is not None]
        wanted = {("project", project_id), *(("worker", worker_id) for worker_id in workers)}
        if not wanted <= known:
            row = await self.fetch_row(
                _REFERENCES_EXIST,
                {"project_id": project_id, "assignee_id": assignee_id, "creator_id": creator_id},
            )
            assert row is not None
            for (kind, entity_id), exists_now in zip(
                (("project", project_id), ("worker", assignee_id), ("worker", creator_id)),
                row,
                strict=True,
            ):
                if exists_now and entity_id is not None:
                    known.add((kind, entity_id))
        return (
            ("project", project_id) in known,
            assignee_id is None or ("worker", assignee_id) in known,
            creator_id is None or ("worker", creator_id) in known,
        )

    async def _check_parent(self, task: AnyTask) -> None:
        assert task.parent_task_id is not None
        # FOR SHARE: a concurrent DeleteTask of the parent (FOR UPDATE) finishes first,
        # and the parent is then seen deleted; a concurrent create/move under it waits.
        parent = await self.find(task.parent_task_id, for_share=True)
        if parent is None:
            raise FailedPrecondition(
                "PARENT_TASK_NOT_FOUND",
                f"parent task {task.parent_task_id} does not exist",
                parent_task_id=task.parent_task_id,
            )
        if parent.delete_time is not None:
            raise parent_deleted(parent)
        if parent.project_id != task.project_id:
            raise FailedPrecondition(
                "PARENT_IN_OTHER_PROJECT",
                f"parent task {parent.id} belongs to project {parent.project_id}",
                parent_task_id=parent.id,
                project_id=task.project_id,
            )
        if task.id is not None and task.id in await self.ancestor_ids(parent.id):  # type: ignore[arg-type]
            raise FailedPrecondition(
                "TASK_CYCLE",
                f"task {task.id} cannot be moved under its own subtree (task {parent.id})",
                task_id=task.id,
                parent_task_id=parent.id,
            )

    async def ancestor_ids(self, task_id: int) -> set[int]:
        """The task and all its ancestors (a recursive CTE, on PostgreSQL and SQLite)."""
        tasks = Task.__table__  # type: ignore[attr-defined]
        chain = (
            select(tasks.c.id, tasks.c.parent_task_id)
            .where(tasks.c.id == task_id)
            .cte("chain", recursive=True)
        )
        # UNION, not UNION ALL: even a cycle already in the data cannot make the walk endless.
        chain = chain.union(
            select(tasks.c.id, tasks.c.parent_task_id).where(tasks.c.id == chain.c.parent_task_id)
        )
        result = await self.session.exec(select(chain.c.id))
        return set(result.all())

    async def has_live_subtasks(self, task_id: int) -> bool:
        """Whether any live (not soft-deleted) task has this one as its parent."""
        result = await self.session.exec(
            select(Task.id)
            .where(col(Task.parent_task_id) == task_id, col(Task.delete_time).is_(None))
            .limit(1)
        )
        return result.first() is not None

    async def live_descendants(self, task_id: int) -> list[Task]:
        """All live tasks below this one, locked for update (a recursive CTE)."""
        tasks = Task.__table__  # type: ignore[attr-defined]
        live = tasks.c.delete_time.is_(None)
        tree = (
            select(tasks.c.id)
            .where(tasks.c.parent_task_id == task_id, live)
            .cte("tree", recursive=True)
        )
        tree = tree.union(select(tasks.c.id).where(tasks.c.parent_task_id == tree.c.id, live))
        statement = select(Task).where(col(Task.id).in_(select(tree.c.id))).with_for_update()
        return list((await self.session.exec(statement)).all())

    async def deleted_with(self, task_id: int) -> list[Task]:
        """The tasks soft-deleted by the delete of `task_id` (itself included), locked."""
        statement = select(Task).where(col(Task.deleted_with_id) == task_id).with_for_update()
        return list((await self.session.exec(statement)).all())

    async def referencing_worker(self, worker_id: int) -> list[Task]:
        """Every task (deleted or not) assigned to or created by a worker, locked for update."""
        statement = (
            select(Task)
            .where(or_(col(Task.assignee_id) == worker_id, col(Task.creator_id) == worker_id))
            .with_for_update()
        )
        return list((await self.session.exec(statement)).all())

    async def purge_deleted(
        self, *, project_id: int | None = None, deleted_before: datetime | None = None
    ) -> int:
        """Hard-delete soft-deleted tasks (of a project, or deleted before a time).

        Leaves go first, round by round, because a parent row may not disappear
        while a child still points at it (the foreign key is RESTRICT). A deleted
        task whose subtree still holds live tasks is kept.
        """
        tasks = Task.__table__  # type: ignore[attr-defined]
        purgeable = tasks.c.delete_time.is_not(None)
        if project_id is not None:
            purgeable = and_(purgeable, tasks.c.project_id == project_id)
        if deleted_before is not None:
            purgeable = and_(purgeable, tasks.c.delete_time < deleted_before)
        children = select(tasks.c.parent_task_id).where(tasks.c.parent_task_id.is_not(None))
        total = 0
        while True:
            result = await self.session.exec(
                delete(tasks).where(purgeable, tasks.c.id.not_in(children.scalar_subquery()))
            )
            if not result.rowcount:
                return total
            total += int(result.rowcount)

    async def lock_tree(self, project_id: int) -> None:
        """Serialise re-parenting within a project until commit.

        Two concurrent moves (A under B, B under A) would each pass the cycle check
        against the other's uncommitted state; a transaction-scoped advisory lock
        per project makes them take turns. SQLite needs none: BEGIN IMMEDIATE
        already admits one writer at a time.
        """
        if self.dialect == "postgresql":
            lock_key = func.hashtextextended(f"taskservice.tree.{project_id}", 0)
            await self.session.exec(select(func.pg_advisory_xact_lock(lock_key)))


def parent_deleted(parent: Task, **metadata: object) -> FailedPrecondition:
    """The error for using a soft-deleted task as a parent."""
    return FailedPrecondition(
        "PARENT_TASK_DELETED",
        f"parent task {parent.id} is deleted; undelete it first",
        parent_task_id=parent.id,
        **metadata,
    )
