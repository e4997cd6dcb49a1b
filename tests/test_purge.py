"""Retention: `taskservice purge` removes soft-deleted tasks and old request ids for good."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc

from service.settings import Settings
from service.storage.purge import purge
from taskmanager.v1 import resources_pb2, task_service_pb2
from tests.conftest import create_task
from tests.rpc_errors import expect_failure


async def test_purge_removes_soft_deleted_subtrees_past_retention(tasks, project, database_url):
    root = await create_task(tasks, project.id)
    child = await create_task(tasks, project.id, parent_task_id=root.id)
    live = await create_task(tasks, project.id)
    await tasks.DeleteTask(task_service_pb2.DeleteTaskRequest(id=root.id, force=True))

    await purge(Settings(database_url=database_url), task_retention=timedelta(days=30))
    assert (await tasks.GetTask(task_service_pb2.GetTaskRequest(id=child.id))).HasField(
        "delete_time"
    ), "deleted yesterday, kept for 30 days"

    await purge(Settings(database_url=database_url), task_retention=timedelta(0))
    for gone in (root, child):
        failure = await expect_failure(
            tasks.GetTask(task_service_pb2.GetTaskRequest(id=gone.id)), grpc.StatusCode.NOT_FOUND
        )
        assert failure.info.reason == "TASK_NOT_FOUND"
    assert (await tasks.GetTask(task_service_pb2.GetTaskRequest(id=live.id))).id == live.id


async def test_request_ids_are_forgotten_after_retention(tasks, project, database_url):
    request = task_service_pb2.CreateTaskRequest(
        task=resources_pb2.Task(project_id=project.id, title="once"),
        request_id=str(uuid.uuid4()),
    )
    first = await tasks.CreateTask(request)
    assert (await tasks.CreateTask(request)).id == first.id
    await purge(Settings(database_url=database_url), request_id_retention=timedelta(0))
    assert (await tasks.CreateTask(request)).id != first.id
