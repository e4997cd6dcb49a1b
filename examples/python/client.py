"""A minimal Python client of TaskService, using the generated stubs.

    pip install .            # or `make install`: provides the `taskmanager.v1` stubs
    python examples/python/client.py [host:port]     # default localhost:50051

Creates a project and a few tasks, pages through ListTasks, consumes StreamTasks and
prints what it got. The last line is `RESULT {...}`, a JSON summary for scripts.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import grpc

from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

TIMEOUT_S = 10.0


def main(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)

        project = projects.CreateProject(
            project_service_pb2.CreateProjectRequest(
                project=resources_pb2.Project(name=f"python-example-{uuid.uuid4().hex[:8]}"),
                request_id=str(uuid.uuid4()),  # safe to retry (AIP-155)
            ),
            timeout=TIMEOUT_S,
        )
        print(f"created project {project.id} {project.name}")

        created = []
        for i in range(1, 6):
            task = tasks.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    task=resources_pb2.Task(
                        project_id=project.id,
                        title=f"python task {i}",
                        priority=resources_pb2.TASK_PRIORITY_HIGH,
                        tags=["python-example"],
                    )
                ),
                timeout=TIMEOUT_S,
            )
            created.append(task.id)
            print(f"created task {task.id} {task.title!r}")

        # ListTasks, two per page, oldest first, until next_page_token is empty.
        listed: list[int] = []
        pages = 0
        request = task_service_pb2.ListTasksRequest(
            project_id=project.id, page_size=2, order_by="create_time"
        )
        while True:
            page = tasks.ListTasks(request, timeout=TIMEOUT_S)
            pages += 1
            listed.extend(task.id for task in page.tasks)
            print(f"page {pages}: {[task.id for task in page.tasks]}")
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token

        # StreamTasks in batches of two; each batch carries a resume token.
        streamed: list[int] = []
        batches = 0
        stream_request = task_service_pb2.StreamTasksRequest(project_id=project.id, batch_size=2)
        for batch in tasks.StreamTasks(stream_request, timeout=TIMEOUT_S):
            batches += 1
            streamed.extend(task.id for task in batch.tasks)
            print(f"batch {batches}: {[task.id for task in batch.tasks]}")

    summary = {
        "projectId": project.id,
        "created": created,
        "listed": listed,
        "pages": pages,
        "streamed": streamed,
        "batches": batches,
    }
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TASKSERVICE_ADDRESS")
    try:
        main(target or "localhost:50051")
    except grpc.RpcError as error:
        print(f"error ({error.code().name}): {error.details()}", file=sys.stderr)
        sys.exit(1)
