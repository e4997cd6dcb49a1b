"""The scale-out bench runs end to end in smoke mode; timings are not checked."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from tests.infra.service_process import ROOT

TIMEOUT = 300


async def test_scaleout_bench_smoke_compares_every_step_with_no_failed_call() -> None:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench", "scaleout", "--smoke", "--seconds", "0.5"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its servers, PgBouncer and PostgreSQL join this group
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        pytest.fail(f"the scale-out bench took over {TIMEOUT} s")
    output = stdout.decode()
    assert process.returncode == 0, output + stderr.decode()[-3000:]
    for title in (
        "GetTask: PgBouncer / direct",
        "CreateTask: PgBouncer / direct",
        "GetTask: with standby / primary only",
        "GetTask + consistency token: with standby / primary only",
        "ListTasks (50): with standby / primary only",
    ):
        row = next(line for line in output.splitlines() if line.startswith(title))
        baseline, scaled, _, failed = row[len(title) :].split()
        assert float(baseline.replace(",", "")) > 0
        assert float(scaled.replace(",", "")) > 0
        assert failed == "0"
    assert "FAILED calls" not in output
