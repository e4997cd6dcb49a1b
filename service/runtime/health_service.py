"""The standard gRPC health service, complete: Check, Watch and List, errors with ErrorInfo."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2

from service.storage.errors import NotFound, echoed


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer (statuses, Watch, graceful shutdown) plus List,
    which it leaves unimplemented although health.proto declares it, and a Check whose
    NOT_FOUND goes through the error translator like every other error."""

    async def Check(
        self, request: health_pb2.HealthCheckRequest, _context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = self._server_status.get(request.service)
        if status is None:
            raise NotFound(
                "SERVICE_NOT_FOUND",
                f"no health status for service {echoed(request.service)}",
                service=request.service,
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, _request: health_pb2.HealthListRequest, _context: Any
    ) -> health_pb2.HealthListResponse:
        """Every service's status; a handful of services, so never RESOURCE_EXHAUSTED."""
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._server_status.items()
            }
        )
