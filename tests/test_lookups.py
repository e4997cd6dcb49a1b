"""ListWorkers by e-mail and name, ListProjects by name, through the real server."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from taskmanager.v1 import project_service_pb2, worker_service_pb2
from tests.conftest import StatementCounter
from tests.rpc_errors import expect_failure
from tests.safe_writes import DEADLINE, Projects, Workers, new_project, new_worker

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def marker() -> str:
    """A text no other test's names contain."""
    return uuid.uuid4().hex[:10]


async def worker_pages(workers: Workers, **request: Any) -> list[list[int]]:
    message = worker_service_pb2.ListWorkersRequest(**request)
    pages: list[list[int]] = []
    while True:
        response = await workers.ListWorkers(message, timeout=DEADLINE)
        pages.append([worker.id for worker in response.workers])
        if not response.next_page_token:
            return pages
        message.page_token = response.next_page_token


async def project_pages(projects: Projects, **request: Any) -> list[list[int]]:
    message = project_service_pb2.ListProjectsRequest(**request)
    pages: list[list[int]] = []
    while True:
        response = await projects.ListProjects(message, timeout=DEADLINE)
        pages.append([project.id for project in response.projects])
        if not response.next_page_token:
            return pages
        message.page_token = response.next_page_token


# --- workers by e-mail ----------------------------------------------------------------------


async def test_email_lookup_is_exact_and_ignores_case_and_blanks(workers: Workers) -> None:
    tag = marker()
    ada = await new_worker(workers, email=f"Ada.{tag}@Example.com")
    await new_worker(workers, email=f"ada.{tag}@example.co")
    await new_worker(workers, email=f"x.ada.{tag}@example.com")

    for asked in (f"ada.{tag}@example.com", f"  ADA.{tag}@EXAMPLE.COM "):
        response = await workers.ListWorkers(worker_service_pb2.ListWorkersRequest(email=asked))
        assert [worker.id for worker in response.workers] == [ada.id]
        assert response.next_page_token == ""
    assert response.workers[0].email == f"ada.{tag}@example.com"


async def test_email_lookup_without_a_match_is_an_empty_page(workers: Workers) -> None:
    response = await workers.ListWorkers(
        worker_service_pb2.ListWorkersRequest(email=f"nobody.{marker()}@example.com")
    )
    assert list(response.workers) == []
    assert response.next_page_token == ""


async def test_email_and_name_filters_combine(workers: Workers) -> None:
    tag = marker()
    grace = await new_worker(workers, name=f"Grace {tag}", email=f"grace.{tag}@example.com")
    asked = {"email": grace.email}
    assert await worker_pages(workers, **asked, name_contains=tag) == [[grace.id]]
    assert await worker_pages(workers, **asked, name_contains=f"Ada {tag}") == [[]]


# --- names ----------------------------------------------------------------------------------


async def test_worker_name_contains_is_case_insensitive_and_pages_by_id(workers: Workers) -> None:
    tag = marker()
    made = [
        await new_worker(workers, name=name)
        for name in (f"Ada {tag}", f"ADA-{tag.upper()}", f"zz{tag}zz", f"Ærø {tag}")
    ]
    await new_worker(workers, name="someone else")

    pages = await worker_pages(workers, name_contains=tag, page_size=3)

    assert pages == [[w.id for w in made[:3]], [made[3].id]]
    assert await worker_pages(workers, name_contains=f"æRØ {tag}") == [[made[3].id]]


async def test_project_name_contains_pages_every_match_once_in_id_order(
    projects: Projects,
) -> None:
    tag = marker()
    made = [(await new_project(projects, name=f"{prefix}-{tag}")).id for prefix in "abcde"]
    await new_project(projects, name=f"other-{marker()}")

    pages = await project_pages(projects, name_contains=tag.upper(), page_size=2)

    assert pages == [made[0:2], made[2:4], made[4:5]]


async def test_wildcards_in_name_contains_are_literal(projects: Projects) -> None:
    tag = marker()
    literal = await new_project(projects, name=f"100%_{tag}")
    await new_project(projects, name=f"100xx{tag}")
    assert await project_pages(projects, name_contains=f"100%_{tag}") == [[literal.id]]


async def test_page_tokens_are_bound_to_the_lookup_filters(
    projects: Projects, workers: Workers
) -> None:
    tag = marker()
    for prefix in "abc":
        await new_project(projects, name=f"{prefix}-{tag}")
        await new_worker(workers, name=f"{prefix} {tag}")
    project_page = await projects.ListProjects(
        project_service_pb2.ListProjectsRequest(name_contains=tag, page_size=1)
    )
    worker_page = await workers.ListWorkers(
        worker_service_pb2.ListWorkersRequest(name_contains=tag, page_size=1)
    )
    calls = [
        projects.ListProjects(
            project_service_pb2.ListProjectsRequest(
                name_contains="other", page_size=1, page_token=project_page.next_page_token
            )
        ),
        projects.ListProjects(
            project_service_pb2.ListProjectsRequest(page_token=project_page.next_page_token)
        ),
        workers.ListWorkers(
            worker_service_pb2.ListWorkersRequest(
                name_contains=tag,
                email="a@example.com",
                page_token=worker_page.next_page_token,
            )
        ),
    ]
    for call in calls:
        failure = await expect_failure(call, INVALID)
        assert failure.info.reason == "INVALID_PAGE_TOKEN"


async def test_filtered_pages_cost_the_same_statements(
    workers: Workers, statements: StatementCounter
) -> None:
    tag = marker()
    for index in range(9):
        await new_worker(workers, name=f"w{index} {tag}")
    message = worker_service_pb2.ListWorkersRequest(name_contains=tag, page_size=2)
    counts = []
    while True:
        statements.statements.clear()
        response = await workers.ListWorkers(message)
        counts.append(statements.count)
        if not response.next_page_token:
            break
        message.page_token = response.next_page_token
    assert counts == [1] * 5


@pytest.mark.parametrize(
    ("field", "value"),
    [("name_contains", "a\x00b"), ("name_contains", "x" * 201), ("email", "a" * 255)],
)
async def test_bad_lookup_text_is_invalid_argument(
    projects: Projects, workers: Workers, field: str, value: str
) -> None:
    failure = await expect_failure(
        workers.ListWorkers(worker_service_pb2.ListWorkersRequest(**{field: value})), INVALID
    )
    assert failure.fields == [field]
    if field == "name_contains":
        failure = await expect_failure(
            projects.ListProjects(project_service_pb2.ListProjectsRequest(name_contains=value)),
            INVALID,
        )
        assert failure.fields == [field]
