"""Follow TaskService's change feed (WatchTasks) with the resume loop, in Python.

    pip install .            # or `make install`: provides the `taskmanager.v1` stubs
    python examples/python/watch.py [host:port]      # default localhost:50051

`follow` is the loop every consumer needs: keep a local copy of the watched tasks, remember
the last cursor, and after any break call again from it (no gap, no duplicate); start over
from a snapshot when the cursor has expired. The demo makes changes, "loses" the stream,
makes more changes while disconnected, resumes, and checks the copy against ListTasks.
The last line is `RESULT {...}`, a JSON summary for scripts.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

pb = task_service_pb2
TIMEOUT_S = 10.0
# Breaks to resume from: server draining or down, this client too slow, a deadline.
RESUMABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


class Mirror:
    """A local copy of the watched tasks, and the cursor it is up to date with."""

    def __init__(self) -> None:
        self.tasks: dict[int, resources_pb2.Task] = {}
        self.cursor = ""
        self.changes = 0  # events applied, bookmarks aside

    def apply(self, event: pb.TaskEvent) -> None:
        if event.type != pb.TASK_EVENT_TYPE_BOOKMARK:
            self.changes += 1
            if event.no_longer_matches:
                self.tasks.pop(event.task.id, None)
            else:
                self.tasks[event.task.id] = event.task
        if event.cursor:  # events of an initial snapshot have none
            self.cursor = event.cursor


def follow(
    tasks: task_service_pb2_grpc.TaskServiceStub,
    mirror: Mirror,
    filters: dict[str, Any],
    done: Callable[[Mirror], bool],
) -> int:
    """The resume loop: keep `mirror` equal to the watched set until `done(mirror)`.
    Returns how many streams it took."""
    streams, delay = 0, 0.1
    while True:
        if not mirror.cursor:
            mirror.tasks.clear()  # a fresh start: the snapshot rebuilds the copy
        request = pb.WatchTasksRequest(
            **filters, start_cursor=mirror.cursor, initial_snapshot=not mirror.cursor
        )
        call = tasks.WatchTasks(request)
        streams += 1
        try:
            for response in call:
                delay = 0.1
                for event in response.events:
                    mirror.apply(event)
                if done(mirror):
                    call.cancel()
                    return streams
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.OUT_OF_RANGE:  # CURSOR_EXPIRED: re-list
                mirror.cursor = ""
            elif error.code() not in RESUMABLE:
                raise
            print(f"stream ended ({error.code().name}); resuming from the last cursor")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def main(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        name = f"python-watch-{uuid.uuid4().hex[:8]}"
        project = projects.CreateProject(
            project_service_pb2.CreateProjectRequest(project=resources_pb2.Project(name=name)),
            timeout=TIMEOUT_S,
        )

        def create(title: str) -> resources_pb2.Task:
            task = resources_pb2.Task(project_id=project.id, title=title)
            created: resources_pb2.Task = tasks.CreateTask(
                pb.CreateTaskRequest(task=task), timeout=TIMEOUT_S
            )
            return created

        def retitle(task_id: int, title: str) -> None:
            task = resources_pb2.Task(id=task_id, title=title)
            request = pb.UpdateTaskRequest(task=task, update_mask={"paths": ["title"]})
            tasks.UpdateTask(request, timeout=TIMEOUT_S)

        first, second = create("first"), create("second")
        mirror, filters = Mirror(), {"project_id": project.id}

        # 1. The initial snapshot: both tasks, then a bookmark with the first cursor.
        streams = follow(tasks, mirror, filters, lambda m: bool(m.cursor))
        print(f"snapshot: {sorted(mirror.tasks)}")
        snapshot = mirror.changes

        # 2. Live changes arrive in commit order, each with its cursor.
        third = create("third")
        retitle(first.id, "first, renamed")
        streams += follow(tasks, mirror, filters, lambda m: m.changes == snapshot + 2)
        print(f"after two changes: {sorted(mirror.tasks)}")

        # 3. The stream is gone (follow returned); changes made meanwhile are not lost:
        tasks.DeleteTask(pb.DeleteTaskRequest(id=second.id), timeout=TIMEOUT_S)
        retitle(third.id, "third, renamed")
        streams += follow(tasks, mirror, filters, lambda m: m.changes == snapshot + 4)
        print(f"resumed: {sorted(mirror.tasks)}")

        listed = tasks.ListTasks(pb.ListTasksRequest(project_id=project.id), timeout=TIMEOUT_S)
        summary = {
            "projectId": project.id,
            "snapshot": snapshot,
            "changes": mirror.changes,
            "streams": streams,
            "mirror": {str(k): v.title for k, v in sorted(mirror.tasks.items())},
            "listed": {str(t.id): t.title for t in sorted(listed.tasks, key=lambda t: t.id)},
        }
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TASKSERVICE_ADDRESS")
    try:
        main(target or "localhost:50051")
    except grpc.RpcError as error:
        print(f"error ({error.code().name}): {error.details()}", file=sys.stderr)
        sys.exit(1)
