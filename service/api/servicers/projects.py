"""ProjectService."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from service.api.mapping.projects import (
    apply_project_update,
    project_filter_from,
    project_from_message,
    project_to_message,
)
from service.api.pagination import Pagination
from service.api.requests import (
    check_create_project,
    check_list_projects,
    check_update_project,
    requested_project,
)
from service.api.servicers.dependencies import Dependencies
from service.api.servicers.history import PROJECT_HISTORY
from service.api.servicers.resource import ResourceKind, StandardMethods
from service.storage.audit_snapshots import project_snapshot
from service.storage.keyset import int_field
from service.storage.models import Project
from taskmanager.v1 import project_service_pb2 as pb
from taskmanager.v1 import project_service_pb2_grpc, resources_pb2

Context = Any  # grpc.aio.ServicerContext

PROJECTS: ResourceKind[Project, resources_pb2.Project] = ResourceKind(
    name="project",
    message_type=resources_pb2.Project,
    repository=lambda uow: uow.projects,
    to_message=project_to_message,
    from_message=project_from_message,
    apply_update=apply_project_update,
    snapshot=project_snapshot,
    check_list=check_list_projects,
    list_filter=project_filter_from,
    listing=Pagination(
        method="ListProjects",
        order_fields={"id": int_field(Project.id)},
        default_order="id",
        default_size=50,
        max_size=1000,
    ),
    view_enum=resources_pb2.ProjectView,
    full_view=resources_pb2.PROJECT_VIEW_FULL,
    task_counts=lambda uow, ids: uow.projects.task_counts(ids),
)


class ProjectServicer(project_service_pb2_grpc.ProjectServiceServicer):
    """Projects: the named collections that own tasks."""

    def __init__(self, deps: Dependencies) -> None:
        self.methods = StandardMethods(deps, PROJECTS)

    async def CreateProject(
        self, request: pb.CreateProjectRequest, context: Context
    ) -> resources_pb2.Project:
        check_create_project(request)
        project = requested_project(request)
        return await self.methods.create("CreateProject", request, project, context)

    async def GetProject(
        self, request: pb.GetProjectRequest, context: Context
    ) -> resources_pb2.Project:
        return await self.methods.get(request.id, request.view, context)

    async def ListProjects(
        self, request: pb.ListProjectsRequest, context: Context
    ) -> pb.ListProjectsResponse:
        projects, token = await self.methods.list(request, context)
        return pb.ListProjectsResponse(projects=projects, next_page_token=token)

    async def UpdateProject(
        self, request: pb.UpdateProjectRequest, context: Context
    ) -> resources_pb2.Project:
        fields = check_update_project(request)
        return await self.methods.update(request.project, fields, context)

    async def ListProjectEvents(
        self, request: pb.ListProjectEventsRequest, context: Context
    ) -> pb.ListProjectEventsResponse:
        events, token = await PROJECT_HISTORY.page(self.methods.deps, request, context)
        return pb.ListProjectEventsResponse(events=events, next_page_token=token)

    async def DeleteProject(
        self, request: pb.DeleteProjectRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.methods.delete(request.id, request.etag, context)
        return empty_pb2.Empty()
