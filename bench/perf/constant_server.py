"""The transport ceiling: grpc.aio answering every GetTask with one constant Task.

No database, no validation: what grpc.aio and protobuf cost per call on this
machine. The Task is built once, shaped like a seeded row in the BASIC view.

    python -m bench.perf.constant_server --address 127.0.0.1:50099 [--loop uvloop]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import grpc

from bench.grpc_server import add_server_options, run, serve_until_signal
from taskmanager.v1 import resources_pb2, task_service_pb2_grpc
from taskmanager.v1 import task_service_pb2 as pb

CONSTANT_TASK = resources_pb2.Task(
    id=4242,
    project_id=42,
    title="Fix login flow #4242",
    description="Benchmark task 4242 of project 42.",
    status=resources_pb2.TASK_STATUS_IN_PROGRESS,
    priority=resources_pb2.TASK_PRIORITY_MEDIUM,
    tags=["backend", "perf"],
    assignee_id=17,
    etag='"1"',
)
CONSTANT_TASK.create_time.FromSeconds(1_735_689_600)
CONSTANT_TASK.update_time.FromSeconds(1_735_776_000)


class ConstantTaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    """GetTask only; every other method answers UNIMPLEMENTED."""

    # gRPC fixes the signature; the answer ignores the request.
    async def GetTask(
        self,
        request: pb.GetTaskRequest,  # noqa: ARG002
        context: grpc.aio.ServicerContext[Any, Any],  # noqa: ARG002
    ) -> resources_pb2.Task:
        return CONSTANT_TASK


async def serve(address: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    servicer = ConstantTaskServicer()  # type: ignore[abstract]
    await serve_until_signal(
        address,
        lambda server: task_service_pb2_grpc.add_TaskServiceServicer_to_server(servicer, server),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m bench.perf.constant_server`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_server_options(parser)
    args = parser.parse_args(argv)
    run(lambda: serve(args.address), args.loop)


if __name__ == "__main__":
    main()
