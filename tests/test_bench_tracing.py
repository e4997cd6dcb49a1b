"""The perf bench's tracing cost (bench/perf/tracing.py) runs end to end in smoke mode, today's
code (this checkout) included; timings unchecked."""

from __future__ import annotations

import re

import pytest

from tests.test_bench_smoke import ROOT, TIMEOUT, _smoke

MODES = ("today's code", "tracing off", "tracing on")
METRICS = ("GetTask calls/s", "GetTask server CPU", "StreamTasks tasks/s", "StreamTasks server CPU")


@pytest.mark.timeout(TIMEOUT + 30)
async def test_tracing_cost_measures_every_server_and_the_traced_one_exports_every_span() -> None:
    stdout = await _smoke("perf", "--only", "tracing", "--today", str(ROOT))
    assert "== Tracing cost (on: every call sampled;" in stdout
    for metric in METRICS:
        for mode in MODES:
            assert re.search(rf"  {metric}[^\n]*, {mode}  +[\d,.]+ \(", stdout), (metric, mode)
        assert re.search(rf"  {metric}[^\n]*, on against off  +[+-][\d.]+%", stdout), metric
        assert re.search(rf"  {metric}[^\n]*, off against today's code  +[+-][\d.]+%", stdout)
    exported = re.search(
        r"spans the traced server exported / its calls made +([\d,]+) / ([\d,]+)", stdout
    )
    assert exported is not None, stdout
    got, made = (int(number.replace(",", "")) for number in exported.groups())
    assert made > 0
    assert got >= made  # none dropped (calls in flight when h2load stops add a few)
    assert re.search(r"every GetTask OK, every stream whole +yes +yes +met", stdout), stdout
    assert "== Throughput" in stdout  # the rest of the perf report, with nothing measured
