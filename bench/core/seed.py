"""Seed the benchmark database by COPY: synthetic projects, workers and tasks shaped like use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import asyncpg

COPY_COLUMNS = (
    "id",
    "project_id",
    "title",
    "description",
    "status",
    "priority",
    "tags",
    "assignee_id",
    "parent_task_id",
    "create_time",
    "update_time",
)
# Every column of a task the BASIC view needs, in this order: what the hand-written queries
# (the baselines, the OFFSET and search SQL) select, as the service does.
TASK_COLUMNS = ", ".join((*COPY_COLUMNS, "version", "delete_time"))
# Lists and streams hide soft-deleted tasks unless asked (migration 0003).
LIVE = "delete_time IS NULL"
PEOPLE_COLUMNS = ("id", "name", "email", "create_time", "update_time")
PROJECT_COLUMNS = ("id", "name", "description", "create_time", "update_time")

# One task in RARE_EVERY has RARE_TAG, another RARE_WORD in its title: the searches are
# selective enough for their GIN indexes to be the right plan.
RARE_TAG = "security-audit"
RARE_WORD = "Quasar"
RARE_EVERY = 1000
STATUSES = ("PENDING", "IN_PROGRESS", "BLOCKED", "DONE", "CANCELLED")
STATUS_WEIGHTS = (30, 20, 5, 40, 5)
PRIORITY_WEIGHTS = (20, 50, 20, 10)
COMMON_TAGS = ("backend", "frontend", "bug", "feature", "docs", "infra", "ops", "ux", "perf", "api")
VERBS = ("Fix", "Add", "Refactor", "Review", "Document", "Test", "Deploy", "Investigate")
NOUNS = ("login flow", "billing export", "search page", "cache layer", "API gateway", "audit log")
ASSIGNED_SHARE = 0.6
SUBTASK_SHARE = 0.2
START = datetime(2024, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=730)
CHUNK = 50_000


class TaskRows:
    """Generates task rows in id order; remembers each project's latest task for parents."""

    def __init__(self, total: int, projects: int, workers: int, seed: int = 20261123) -> None:
        self.total = total
        self.projects = projects
        self.workers = workers
        self.rng = Random(seed)
        self.tag_pool = [self.rng.sample(COMMON_TAGS, self.rng.randint(0, 3)) for _ in range(256)]
        self.tag_json = [json.dumps(tags) for tags in self.tag_pool]
        self.step_us = SPAN // timedelta(microseconds=1) // total
        self.latest: dict[int, int] = {}

    def chunks(self, size: int = CHUNK) -> Iterator[list[tuple[Any, ...]]]:
        """All rows, `size` at a time."""
        for first in range(1, self.total + 1, size):
            yield self.chunk(first, min(size, self.total + 1 - first))

    def chunk(self, first: int, count: int) -> list[tuple[Any, ...]]:
        """Rows for ids first .. first + count - 1."""
        rng = self.rng
        projects = rng.choices(range(1, self.projects + 1), k=count)
        statuses = rng.choices(STATUSES, STATUS_WEIGHTS, k=count)
        priorities = rng.choices((1, 2, 3, 4), PRIORITY_WEIGHTS, k=count)
        tags = rng.choices(range(len(self.tag_pool)), k=count)
        return [
            self._row(first + i, projects[i], statuses[i], priorities[i], tags[i])
            for i in range(count)
        ]

    def _row(
        self, task_id: int, project: int, status: str, priority: int, tag: int
    ) -> tuple[Any, ...]:
        rng = self.rng
        # Create times grow with the id, jittered so that the two orders differ.
        jitter = rng.randint(-5 * self.step_us, 5 * self.step_us)
        created = START + timedelta(microseconds=task_id * self.step_us + jitter)
        updated = created + timedelta(seconds=rng.randint(0, 10 * 86_400))
        assignee = 1 + task_id * 7919 % self.workers if rng.random() < ASSIGNED_SHARE else None
        parent = self.latest.get(project) if rng.random() < SUBTASK_SHARE else None
        self.latest[project] = task_id
        return (
            task_id,
            project,
            _title(task_id),
            f"Benchmark task {task_id} of project {project}.",
            status,
            priority,
            self._tags(task_id, tag),
            assignee,
            parent,
            created,
            updated,
        )

    def _tags(self, task_id: int, tag: int) -> str:
        if task_id % RARE_EVERY == 0:
            return json.dumps([*self.tag_pool[tag], RARE_TAG])
        return self.tag_json[tag]


def _title(task_id: int) -> str:
    noun = NOUNS[task_id // 7 % len(NOUNS)]
    if task_id % RARE_EVERY == RARE_EVERY // 2:
        noun = f"{RARE_WORD} {noun}"
    return f"{VERBS[task_id % len(VERBS)]} {noun} #{task_id}"


def _people(count: int) -> list[tuple[Any, ...]]:
    return [
        (i, f"Worker {i}", f"worker{i}@bench.example.com", START, START)
        for i in range(1, count + 1)
    ]


def _projects(count: int) -> list[tuple[Any, ...]]:
    return [
        (i, f"bench-project-{i:05d}", f"Benchmark project {i}", START, START)
        for i in range(1, count + 1)
    ]


async def seed(dsn: str, tasks: int, projects: int, workers: int) -> None:
    """COPY every row into an empty database whose tables exist."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.copy_records_to_table(
            "projects", records=_projects(projects), columns=PROJECT_COLUMNS
        )
        await connection.copy_records_to_table(
            "workers", records=_people(workers), columns=PEOPLE_COLUMNS
        )
        for rows in TaskRows(tasks, projects, workers).chunks():
            await connection.copy_records_to_table("tasks", records=rows, columns=COPY_COLUMNS)
        for table in ("projects", "workers", "tasks"):
            # Ids were given explicitly: move each sequence past them for later inserts.
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
            )
    finally:
        await connection.close()
