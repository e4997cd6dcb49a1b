"""Worker message <-> Worker entity."""

from __future__ import annotations

from collections.abc import Set
from datetime import datetime

from service.api.mapping.timestamps import to_timestamp
from service.storage.etags import etag_of
from service.storage.filters import WorkerFilter
from service.storage.models import Worker
from taskmanager.v1 import resources_pb2, worker_service_pb2


def normalise_email(email: str) -> str:
    """Emails are unique regardless of case and surrounding blanks."""
    return email.strip().lower()


def worker_to_message(worker: Worker) -> resources_pb2.Worker:
    """The API form of a stored worker."""
    message = resources_pb2.Worker(
        id=worker.id or 0, name=worker.name, email=worker.email, etag=etag_of(worker)
    )
    to_timestamp(worker.create_time, message.create_time)
    to_timestamp(worker.update_time, message.update_time)
    return message


def worker_from_message(message: resources_pb2.Worker, now: datetime) -> Worker:
    """A new entity from a create request; output-only fields are ignored."""
    return Worker(
        name=message.name.strip(),
        email=normalise_email(message.email),
        create_time=now,
        update_time=now,
    )


def apply_worker_update(
    worker: Worker, message: resources_pb2.Worker, fields: Set[str], now: datetime
) -> None:
    """Copy the masked fields of `message` onto `worker`."""
    if "name" in fields:
        worker.name = message.name.strip()
    if "email" in fields:
        worker.email = normalise_email(message.email)
    worker.update_time = now


def worker_filter_from(request: worker_service_pb2.ListWorkersRequest) -> WorkerFilter:
    """The filter fields of a ListWorkers request (validated beforehand); the e-mail
    address normalised as stored, so the lookup ignores case and surrounding blanks."""
    return WorkerFilter(email=normalise_email(request.email), name_contains=request.name_contains)
