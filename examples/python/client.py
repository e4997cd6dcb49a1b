"""A minimal Python client of TaskService, using the generated stubs.

    pip install .            # or `make install`: provides the `taskmanager.v1` stubs
    python examples/python/client.py [host:port]     # default localhost:50051

Creates a project and a few tasks, pages through ListTasks, consumes StreamTasks and
prints what it got. The last line is `RESULT {...}`, a JSON summary for scripts.

The channel loads the published service config (protos/taskmanager/v1/service_config.json):
reads and creates are retried on UNAVAILABLE, calls wait for the server to be reachable, and
unary calls get a 30 s deadline. Creates are retried only because every one of them carries
a `request_id`: the server answers a repeated id with the first response (AIP-155).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import grpc

from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

SERVICE_CONFIG = Path(__file__).resolve().parents[2] / "protos/taskmanager/v1/service_config.json"
STREAM_TIMEOUT_S = 60.0  # the service config sets no deadline for streams


def main(address: str) -> None:
    options = [("grpc.service_config", SERVICE_CONFIG.read_text())]
    with grpc.insecure_channel(address, options=options) as channel:
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)

        project = projects.CreateProject(
            project_service_pb2.CreateProjectRequest(
                project=resources_pb2.Project(name=f"python-example-{uuid.uuid4().hex[:8]}"),
                request_id=str(uuid.uuid4()),  # makes the retry policy safe (AIP-155)
            )
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
                    ),
                    request_id=str(uuid.uuid4()),
                )
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
            page = tasks.ListTasks(request)
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
        for batch in tasks.StreamTasks(stream_request, timeout=STREAM_TIMEOUT_S):
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
