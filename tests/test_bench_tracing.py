"""The tracing bench (bench/perf/tracing.py) runs end to end in smoke mode; timings unchecked."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from service.settings import normalise_database_url

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TIMEOUT = 300


async def test_tracing_bench_smoke_measures_both_modes_and_gets_every_span() -> None:
    url = normalise_database_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_URL))
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.perf.tracing", "--smoke", "--rounds", "1"),
        *("--duration", "0.5", "--warmup", "0.2", "--load-generator", "python"),
        *("--database-url", admin, "--database-name", f"tracing_smoke_{uuid.uuid4().hex[:10]}"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # the bench's servers join this group
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        pytest.fail(f"the tracing bench took over {TIMEOUT} s")
    output = stdout.decode()
    assert process.returncode == 0, output + stderr.decode()
    assert "| Measurement | tracing off | tracing on | cost of tracing on |" in output
    for row in ("GetTask (BASIC), calls/s", "GetTask, server CPU per call", "StreamTasks of"):
        assert f"| {row}" in output, output
    received = re.search(r"Spans received from the traced server: ([\d,]+) of the ([\d,]+)", output)
    assert received is not None, output
    got, made = (int(number.replace(",", "")) for number in received.groups())
    assert made > 0
    assert got >= made  # none dropped (calls in flight when the load stopped add a few)
    assert "GetTask errors: tracing off 0, tracing on 0." in output
