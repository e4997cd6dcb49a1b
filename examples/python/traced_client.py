"""A Python client that carries its trace into TaskService (OpenTelemetry, W3C traceparent).

    pip install '.[dev]'     # or `make install`: the stubs, the OpenTelemetry SDK and
                             # opentelemetry-instrumentation-grpc
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 \
        python examples/python/traced_client.py [host:port]     # default localhost:50051

opentelemetry-instrumentation-grpc's client interceptor gives each call a client span
and sends its context as `traceparent` metadata, so the server's spans (and its SQL
statement spans) join this client's trace. The client's spans go to
OTEL_EXPORTER_OTLP_ENDPOINT over OTLP/gRPC (none are exported without it; the context
still travels). The last line is `RESULT {...}`: the trace id and the calls' codes.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from taskmanager.v1 import (
    project_service_pb2,
    project_service_pb2_grpc,
    resources_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

TIMEOUT_S = 10.0


def tracer_provider() -> TracerProvider:
    """The client's provider: OTEL_SERVICE_NAME or python-example-client; OTLP if configured."""
    name = os.environ.get("OTEL_SERVICE_NAME", "python-example-client")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def main(address: str) -> None:
    provider = tracer_provider()
    tracer = provider.get_tracer("taskservice-python-example")
    # Every call on this channel gets a client span, child of the current span.
    interceptor = client_interceptor(tracer_provider=provider)
    with (
        grpc.insecure_channel(address) as plain,
        tracer.start_as_current_span("python-example.work") as root,
    ):
        channel = grpcext.intercept_channel(plain, interceptor)
        projects = project_service_pb2_grpc.ProjectServiceStub(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        project = projects.CreateProject(
            project_service_pb2.CreateProjectRequest(name=f"python-traced-{uuid.uuid4().hex[:8]}"),
            timeout=TIMEOUT_S,
        )
        task = tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                task=resources_pb2.Task(project_id=project.id, title="traced from Python")
            ),
            timeout=TIMEOUT_S,
        )
        found = tasks.GetTask(task_service_pb2.GetTaskRequest(id=task.id), timeout=TIMEOUT_S)
        try:
            tasks.GetTask(task_service_pb2.GetTaskRequest(id=999_999_999_999), timeout=TIMEOUT_S)
            missing = grpc.StatusCode.OK
        except grpc.RpcError as error:
            missing = error.code()
        trace_id = format(root.get_span_context().trace_id, "032x")
    provider.shutdown()  # exports the spans still queued
    print(f"trace {trace_id}: GetTask {found.id} found, missing GetTask {missing.name}")
    result = {"traceId": trace_id, "projectId": project.id, "taskId": task.id}
    print("RESULT " + json.dumps({**result, "missing": missing.name}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "localhost:50051")
