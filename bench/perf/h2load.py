"""h2load for unary gRPC calls: the command line and what its report says.

h2load posts the body file (one length-prefixed protobuf message) with the
gRPC headers and counts a request as succeeded on any 2xx/3xx HTTP status. A
gRPC error is an HTTP 200 whose grpc-status (in the trailers, or in the
headers of a trailers-only response) is not 0, so h2load counts it as
succeeded: it never looks at grpc-status. What gives errors away is the DATA:
an error carries no message, so a call whose responses have a fixed size is
checked by `data bytes / response size` (see `grpc_failures`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.perf.calls import GRPC_HEADERS

_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s),")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_TRAFFIC = re.compile(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?\((\d+)\) data")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True)
class H2loadReport:
    """The figures of one h2load run."""

    seconds: float
    started: int
    done: int
    succeeded: int
    failed: int  # failed + errored + timeout
    status_2xx: int
    status_other: int
    data_bytes: int


def command(url: str, body: Path, streams: int, seconds: float) -> list[str]:
    """One client, `streams` concurrent streams, posting `body` for `seconds`."""
    headers = [arg for header in GRPC_HEADERS for arg in ("-H", header)]
    duration = f"{max(1, round(seconds * 1000))}ms"
    return ["h2load", "-D", duration, "-c", "1", "-m", str(streams), "-t", "1"] + [
        "-d",
        str(body),
        *headers,
        url,
    ]


def parse(output: str) -> H2loadReport:
    """The report of an h2load run; ValueError if its summary is not there."""
    finished, requests = _FINISHED.search(output), _REQUESTS.search(output)
    status, traffic = _STATUS.search(output), _TRAFFIC.search(output)
    if not (finished and requests and status and traffic):
        raise ValueError(f"no h2load summary in:\n{output[-2000:]}")
    total, started, done, succeeded, failed, errored, timeout = map(int, requests.groups())
    s2, s3, s4, s5 = map(int, status.groups())
    return H2loadReport(
        seconds=float(finished.group(1)) * _UNIT[finished.group(2)],
        started=started,
        done=done,
        succeeded=succeeded,
        failed=failed + errored + timeout,
        status_2xx=s2,
        status_other=s3 + s4 + s5,
        data_bytes=int(traffic.group(3)),
    )


def grpc_failures(report: H2loadReport, response_frame_bytes: int) -> int:
    """Calls h2load counted as succeeded that carried no response message (gRPC errors),
    for a call whose every response frame has `response_frame_bytes` bytes."""
    messages = round(report.data_bytes / response_frame_bytes)
    return max(0, report.succeeded - messages)
