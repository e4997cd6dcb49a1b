"""A few real calls with a Python client before each load: right answers, and their sizes.

Each request variant is sent once. gRPC calls go through a generic grpc.aio
method with the exact bytes h2load will post, so the status code is read from
the trailers as a real client sees it; the response size is what the h2load
data check expects per call. REST calls go through urllib.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc

from bench.perf.calls import GrpcCall, HttpCall, HttpRequest

FRAME_HEADER = 5
TIMEOUT = 10.0


@dataclass(frozen=True)
class GrpcSample:
    """The answer to each request variant."""

    codes: tuple[str, ...]
    responses: tuple[bytes, ...]
    valid: bool  # every answer OK and right for its request

    @property
    def frame_sizes(self) -> tuple[int, ...]:
        """Bytes of each response as a gRPC frame on the wire (DATA payload)."""
        return tuple(FRAME_HEADER + len(response) for response in self.responses)

    def describe(self) -> str:
        """e.g. `16/16 OK` or `0/1 OK (NOT_FOUND 1)`."""
        ok = self.codes.count("OK")
        others = sorted({code for code in self.codes if code != "OK"})
        tail = ", ".join(f"{code} {self.codes.count(code)}" for code in others)
        return f"{ok}/{len(self.codes)} OK" + (f" ({tail})" if tail else "")


@dataclass(frozen=True)
class HttpSample:
    """The HTTP status and JSON answer to each request variant."""

    statuses: tuple[int, ...]
    valid: bool

    def describe(self) -> str:
        """e.g. `16/16 2xx`."""
        good = sum(1 for status in self.statuses if 200 <= status < 300)
        return f"{good}/{len(self.statuses)} 2xx"


async def sample_grpc(target: str, call: GrpcCall, check: bool = True) -> GrpcSample:
    """Send every variant once; `check` also applies the call's answer check."""
    codes, responses = [], []
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.unary_unary(call.path)  # bytes in, bytes out
        for request in call.requests:
            try:
                responses.append(await method(request.SerializeToString(), timeout=TIMEOUT))
                codes.append("OK")
            except grpc.aio.AioRpcError as error:
                responses.append(b"")
                codes.append(error.code().name)
    valid = all(code == "OK" for code in codes) and (
        not check
        or all(
            call.check(request, call.response_type.FromString(response))
            for request, response in zip(call.requests, responses, strict=True)
        )
    )
    return GrpcSample(tuple(codes), tuple(responses), valid)


async def sample_http(base_url: str, call: HttpCall) -> HttpSample:
    """Send every variant once and check each JSON answer."""
    answers = [await asyncio.to_thread(_fetch, base_url, request) for request in call.requests]
    statuses = tuple(status for status, _ in answers)
    valid = all(
        200 <= status < 300 and body is not None and call.check(request, body)
        for request, (status, body) in zip(call.requests, answers, strict=True)
    )
    return HttpSample(statuses, valid)


def _fetch(base_url: str, request: HttpRequest) -> tuple[int, Any]:
    data = request.body.encode() if request.body else None
    http_request = urllib.request.Request(
        base_url + request.path,
        data=data,
        method=request.method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(http_request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None
