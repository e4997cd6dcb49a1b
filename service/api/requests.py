"""What a valid request looks like, per RPC: field rules and update masks."""

from __future__ import annotations

from service.api.field_mask import MaskRules, resolve_update_mask
from service.api.mapping.tasks import ListOrStream
from service.api.mapping.timestamps import is_valid_timestamp
from service.api.validation import (
    EMAIL_MAX,
    NAME_MAX,
    TITLE_MAX,
    Violations,
    check_email,
    check_enum,
    check_id,
    check_no_nul,
    check_request_id,
    check_tags,
    check_text,
)
from service.storage.models import Task
from taskmanager.v1 import (
    project_service_pb2,
    resources_pb2,
    task_service_pb2,
    worker_service_pb2,
)

TASK_MASK = MaskRules(
    mutable=frozenset(
        {
            "title",
            "description",
            "status",
            "priority",
            "tags",
            "assignee_id",
            "parent_task_id",
            "due_time",
        }
    ),
    immutable=frozenset({"project_id", "creator_id"}),
    output_only=frozenset(
        {
            "id",
            "create_time",
            "update_time",
            "assignee",
            "subtasks",
            "etag",
            "delete_time",
            "project",
            "creator",
        }
    ),
)
PROJECT_MASK = MaskRules(
    mutable=frozenset({"name", "description"}),
    output_only=frozenset({"id", "create_time", "update_time", "etag", "task_counts"}),
)
WORKER_MASK = MaskRules(
    mutable=frozenset({"name", "email"}),
    output_only=frozenset({"id", "create_time", "update_time", "etag", "task_counts"}),
)


def check_task(
    violations: Violations,
    task: resources_pb2.Task,
    fields: frozenset[str],
    *,
    creating: bool,
    prefix: str = "task",
) -> None:
    """Rules for the given fields of a task; on create, UNSPECIFIED enums mean the default."""
    if "project_id" in fields:
        check_id(violations, f"{prefix}.project_id", task.project_id)
    if "title" in fields:
        check_text(violations, f"{prefix}.title", task.title, TITLE_MAX)
    if "description" in fields:
        check_no_nul(violations, f"{prefix}.description", task.description)
    if "status" in fields:
        check_enum(
            violations,
            f"{prefix}.status",
            task.status,
            resources_pb2.TaskStatus,
            allow_unspecified=creating,
        )
    if "priority" in fields:
        check_enum(
            violations,
            f"{prefix}.priority",
            task.priority,
            resources_pb2.TaskPriority,
            allow_unspecified=creating,
        )
    if "tags" in fields:
        check_tags(violations, f"{prefix}.tags", task.tags)
    for name in ("assignee_id", "parent_task_id", "creator_id"):
        if name in fields and task.HasField(name):
            check_id(violations, f"{prefix}.{name}", getattr(task, name))
    if "due_time" in fields and task.HasField("due_time"):
        if not is_valid_timestamp(task.due_time):
            violations.add(f"{prefix}.due_time", "not a valid timestamp", "INVALID_TIMESTAMP")


def check_create_task(request: task_service_pb2.CreateTaskRequest) -> None:
    """INVALID_ARGUMENT listing every bad field of a new task."""
    violations = Violations()
    check_task(violations, request.task, TASK_MASK.mutable | TASK_MASK.immutable, creating=True)
    check_request_id(violations, "request_id", request.request_id)
    if request.HasField("batch_parent_index"):
        violations.add("batch_parent_index", "only allowed in BatchCreateTasks", "NOT_ALLOWED")
    violations.raise_if_any()


BATCH_MAX = 1000


def check_batch_create_tasks(request: task_service_pb2.BatchCreateTasksRequest) -> None:
    """INVALID_ARGUMENT naming every bad field of every task by its index."""
    violations = Violations()
    if not 1 <= len(request.requests) <= BATCH_MAX:
        violations.add("requests", f"must hold 1 to {BATCH_MAX} requests", "BATCH_SIZE")
    check_request_id(violations, "request_id", request.request_id)
    fields = TASK_MASK.mutable | TASK_MASK.immutable
    for index, item in enumerate(request.requests):
        prefix = f"requests[{index}]"
        check_task(violations, item.task, fields, creating=True, prefix=f"{prefix}.task")
        if item.HasField("batch_parent_index"):
            parent_index = item.batch_parent_index
            if not 0 <= parent_index < index:
                violations.add(
                    f"{prefix}.batch_parent_index",
                    "must name an earlier request of this batch",
                    "INVALID_BATCH_PARENT",
                )
            if item.task.HasField("parent_task_id"):
                violations.add(
                    f"{prefix}.batch_parent_index",
                    "cannot be combined with task.parent_task_id",
                    "CONFLICT",
                )
    violations.raise_if_any()


def check_batch_get_tasks(request: task_service_pb2.BatchGetTasksRequest) -> None:
    """INVALID_ARGUMENT unless 1 to 1000 positive ids and a known view (AIP-231)."""
    violations = Violations()
    if not 1 <= len(request.ids) <= BATCH_MAX:
        violations.add("ids", f"must hold 1 to {BATCH_MAX} ids", "BATCH_SIZE")
    for index, task_id in enumerate(request.ids):
        check_id(violations, f"ids[{index}]", task_id)
    check_enum(violations, "view", request.view, resources_pb2.TaskView, allow_unspecified=True)
    violations.raise_if_any()


def check_update_task(request: task_service_pb2.UpdateTaskRequest) -> frozenset[str]:
    """The fields to update; INVALID_ARGUMENT for a bad mask or bad values."""
    violations = Violations()
    check_id(violations, "task.id", request.task.id)
    fields = resolve_update_mask(request.update_mask, request.task, TASK_MASK, violations)
    check_task(violations, request.task, fields, creating=False)
    violations.raise_if_any()
    return fields


def check_immutable_unchanged(
    stored: Task, task: resources_pb2.Task, fields: frozenset[str]
) -> None:
    """INVALID_ARGUMENT if an update changes an immutable field; the same value is fine
    (AIP-203), so a client may send a whole task back."""
    violations = Violations()
    for name in sorted(fields & TASK_MASK.immutable):
        unset = task.DESCRIPTOR.fields_by_name[name].has_presence and not task.HasField(name)  # type: ignore[arg-type]
        sent = None if unset else getattr(task, name)
        if sent != getattr(stored, name):
            violations.add(f"task.{name}", "is immutable", "IMMUTABLE_FIELD")
    violations.raise_if_any()


def check_project(
    violations: Violations, project: resources_pb2.Project, fields: frozenset[str]
) -> None:
    """Rules for the given fields of a project."""
    if "name" in fields:
        check_text(violations, "project.name", project.name, NAME_MAX)
    if "description" in fields:
        check_no_nul(violations, "project.description", project.description)


def check_create_project(request: project_service_pb2.CreateProjectRequest) -> None:
    """INVALID_ARGUMENT listing every bad field of a new project (after the name shorthand)."""
    violations = Violations()
    if request.name and request.project.name and request.name != request.project.name:
        violations.add("name", "differs from project.name; set one of them", "CONFLICT")
    check_project(violations, requested_project(request), PROJECT_MASK.mutable)
    check_request_id(violations, "request_id", request.request_id)
    violations.raise_if_any()


def requested_project(request: project_service_pb2.CreateProjectRequest) -> resources_pb2.Project:
    """The project to create, with the top-level `name` shorthand applied."""
    if not request.name or request.project.name:
        return request.project
    project = resources_pb2.Project()
    project.CopyFrom(request.project)
    project.name = request.name
    return project


def check_update_project(request: project_service_pb2.UpdateProjectRequest) -> frozenset[str]:
    """The fields to update; INVALID_ARGUMENT for a bad mask or bad values."""
    violations = Violations()
    check_id(violations, "project.id", request.project.id)
    fields = resolve_update_mask(request.update_mask, request.project, PROJECT_MASK, violations)
    check_project(violations, request.project, fields)
    violations.raise_if_any()
    return fields


def check_worker(
    violations: Violations, worker: resources_pb2.Worker, fields: frozenset[str]
) -> None:
    """Rules for the given fields of a worker."""
    if "name" in fields:
        check_text(violations, "worker.name", worker.name, NAME_MAX)
    if "email" in fields:
        check_email(violations, "worker.email", worker.email)


def check_create_worker(request: worker_service_pb2.CreateWorkerRequest) -> None:
    """INVALID_ARGUMENT listing every bad field of a new worker."""
    violations = Violations()
    check_worker(violations, request.worker, WORKER_MASK.mutable)
    check_request_id(violations, "request_id", request.request_id)
    violations.raise_if_any()


def check_update_worker(request: worker_service_pb2.UpdateWorkerRequest) -> frozenset[str]:
    """The fields to update; INVALID_ARGUMENT for a bad mask or bad values."""
    violations = Violations()
    check_id(violations, "worker.id", request.worker.id)
    fields = resolve_update_mask(request.update_mask, request.worker, WORKER_MASK, violations)
    check_worker(violations, request.worker, fields)
    violations.raise_if_any()
    return fields


def check_task_filter(request: ListOrStream) -> Violations:
    """Violations in the filter fields of ListTasks/StreamTasks (raised with paging ones)."""
    violations = _check_common_filters(request)
    if request.HasField("creator_id"):
        check_id(violations, "creator_id", request.creator_id)
    if check_no_nul(violations, "title_contains", request.title_contains):
        # No title is longer, and SQLite refuses LIKE patterns above 50,000 bytes.
        if len(request.title_contains) > TITLE_MAX:
            violations.add("title_contains", f"must be at most {TITLE_MAX} characters", "TOO_LONG")
    check_enum(violations, "view", request.view, resources_pb2.TaskView, allow_unspecified=True)
    for name in ("create_time", "update_time", "due_time"):
        check_time_range(violations, name, getattr(request, name))
    return violations


def check_watch_tasks(request: task_service_pb2.WatchTasksRequest) -> None:
    """Rules for a WatchTasks request: the filters it shares with ListTasks, and its start."""
    violations = _check_common_filters(request)
    if request.HasField("creator_id"):
        check_id(violations, "creator_id", request.creator_id)
    check_enum(violations, "view", request.view, resources_pb2.TaskView, allow_unspecified=True)
    if request.initial_snapshot and request.start_cursor:
        violations.add("initial_snapshot", "cannot be combined with start_cursor", "CONFLICT")
    violations.raise_if_any()


def _check_common_filters(
    request: ListOrStream | task_service_pb2.WatchTasksRequest,
) -> Violations:
    """The filters of ListTasks, StreamTasks and WatchTasks alike."""
    violations = Violations()
    if request.project_id < 0:
        violations.add("project_id", "must be a positive id, or 0 for all", "INVALID_ID")
    for index, status in enumerate(request.statuses):
        check_enum(
            violations,
            f"statuses[{index}]",
            status,
            resources_pb2.TaskStatus,
            allow_unspecified=False,
        )
    for index, priority in enumerate(request.priorities):
        check_enum(
            violations,
            f"priorities[{index}]",
            priority,
            resources_pb2.TaskPriority,
            allow_unspecified=False,
        )
    if request.HasField("assignee_id"):
        check_id(violations, "assignee_id", request.assignee_id)
        if request.unassigned:
            violations.add("unassigned", "cannot be combined with assignee_id", "CONFLICT")
    if request.HasField("parent_task_id"):
        check_id(violations, "parent_task_id", request.parent_task_id)
        if request.top_level_only:
            violations.add("top_level_only", "cannot be combined with parent_task_id", "CONFLICT")
    check_tags(violations, "tags", request.tags)
    return violations


def check_list_projects(request: project_service_pb2.ListProjectsRequest) -> Violations:
    """Violations in the filter fields of ListProjects (raised with the paging ones)."""
    violations = Violations()
    check_search_text(violations, "name_contains", request.name_contains, NAME_MAX)
    return violations


def check_list_workers(request: worker_service_pb2.ListWorkersRequest) -> Violations:
    """Violations in the filter fields of ListWorkers (raised with the paging ones)."""
    violations = Violations()
    check_search_text(violations, "email", request.email.strip(), EMAIL_MAX)
    check_search_text(violations, "name_contains", request.name_contains, NAME_MAX)
    return violations


def check_search_text(violations: Violations, field: str, value: str, max_length: int) -> None:
    """Text to look for: no NUL, and no longer than what it is compared with."""
    if check_no_nul(violations, field, value) and len(value) > max_length:
        violations.add(field, f"must be at most {max_length} characters", "TOO_LONG")


def check_time_range(
    violations: Violations, field: str, time_range: resources_pb2.TimeRange
) -> None:
    """Both bounds valid Timestamps (years 1..9999), start before end."""
    bounds = []
    for bound in ("start_time", "end_time"):
        if time_range.HasField(bound):
            value = getattr(time_range, bound)
            if not is_valid_timestamp(value):
                violations.add(f"{field}.{bound}", "not a valid timestamp", "INVALID_TIMESTAMP")
                return
            bounds.append(value.ToNanoseconds())
    if len(bounds) == 2 and bounds[0] >= bounds[1]:
        violations.add(field, "start_time must be before end_time", "EMPTY_RANGE")
