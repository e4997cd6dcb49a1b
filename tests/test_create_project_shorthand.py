"""CreateProjectRequest.name: the hand-typed shorthand for project.name."""

from __future__ import annotations

import grpc
import pytest

from taskmanager.v1 import project_service_pb2, resources_pb2
from tests.conftest import unique
from tests.rpc_errors import expect_failure

# Also through a transaction-pooling PgBouncer (the pgbouncer backend, conftest.py).
pytestmark = pytest.mark.through_pgbouncer


async def test_top_level_name_creates_the_project(projects):
    name = unique("demo")
    created = await projects.CreateProject(project_service_pb2.CreateProjectRequest(name=name))
    assert created.name == name
    fetched = await projects.GetProject(project_service_pb2.GetProjectRequest(id=created.id))
    assert fetched.name == name


async def test_shorthand_and_project_name_must_agree(projects):
    request = project_service_pb2.CreateProjectRequest(
        name=unique("a"), project=resources_pb2.Project(name=unique("b"))
    )
    failure = await expect_failure(
        projects.CreateProject(request), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert failure.fields == ["name"]


async def test_missing_name_names_the_resource_field(projects):
    failure = await expect_failure(
        projects.CreateProject(project_service_pb2.CreateProjectRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == ["project.name"]
