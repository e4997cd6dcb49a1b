"""Project message <-> Project entity."""

from __future__ import annotations

from collections.abc import Set
from datetime import datetime

from service.api.mapping.timestamps import to_timestamp
from service.storage.etags import etag_of
from service.storage.filters import ProjectFilter
from service.storage.models import Project
from taskmanager.v1 import project_service_pb2, resources_pb2


def project_to_message(project: Project) -> resources_pb2.Project:
    """The API form of a stored project."""
    message = resources_pb2.Project(
        id=project.id or 0,
        name=project.name,
        description=project.description,
        etag=etag_of(project),
    )
    to_timestamp(project.create_time, message.create_time)
    to_timestamp(project.update_time, message.update_time)
    return message


def project_from_message(message: resources_pb2.Project, now: datetime) -> Project:
    """A new entity from a create request; output-only fields are ignored."""
    return Project(
        name=message.name.strip(),
        description=message.description,
        create_time=now,
        update_time=now,
    )


def apply_project_update(
    project: Project, message: resources_pb2.Project, fields: Set[str], now: datetime
) -> None:
    """Copy the masked fields of `message` onto `project`."""
    if "name" in fields:
        project.name = message.name.strip()
    if "description" in fields:
        project.description = message.description
    project.update_time = now


def project_filter_from(request: project_service_pb2.ListProjectsRequest) -> ProjectFilter:
    """The filter fields of a ListProjects request (validated beforehand)."""
    return ProjectFilter(name_contains=request.name_contains)
