"""Reading the rich error details (google.rpc.Status) a failed call carries."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class RpcFailure:
    """What a client learns from a failed call."""

    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo
    bad_request: error_details_pb2.BadRequest | None
    retry_info: error_details_pb2.RetryInfo | None = None

    @property
    def fields(self) -> list[str]:
        """Paths of the BadRequest field violations."""
        if self.bad_request is None:
            return []
        return [v.field for v in self.bad_request.field_violations]


async def expect_failure(call: Awaitable[Any], code: grpc.StatusCode) -> RpcFailure:
    """Await `call`, which must fail with `code` and carry ErrorInfo in the status details."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return read_failure(raised.value, code)


def read_failure(error: grpc.aio.AioRpcError, code: grpc.StatusCode) -> RpcFailure:
    """Decode the status details of `error` and check its code."""
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    raw = dict(error.trailing_metadata() or ()).get(DETAILS_KEY)
    assert raw is not None, "every error must carry google.rpc.Status details"
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    bad_request = None
    retry_info = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
    assert info.domain == "taskmanager.v1"
    assert info.reason, "ErrorInfo.reason must be set"
    return RpcFailure(error.code(), error.details() or "", info, bad_request, retry_info)
