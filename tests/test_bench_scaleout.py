"""The scale-out bench runs end to end in smoke mode; timings are not checked."""

from __future__ import annotations

import re

import pytest

from tests.test_bench_smoke import TIMEOUT, _smoke

COMPARISONS = (
    "GetTask: PgBouncer / direct",
    "CreateTask: PgBouncer / direct",
    "GetTask: with standby / primary only",
    "GetTask + consistency token: with standby / primary only",
    "ListTasks (50): with standby / primary only",
)


@pytest.mark.timeout(TIMEOUT + 30)
async def test_scaleout_bench_smoke_compares_every_step_with_no_failed_call() -> None:
    stdout = await _smoke("scaleout", "--seconds", "0.5")
    for title in COMPARISONS:
        rates = re.search(rf"  {re.escape(title)} +[\d.]+ \(([\d,]+) / ([\d,]+) calls/s\)", stdout)
        assert rates is not None, (title, stdout)
        assert all(int(rate.replace(",", "")) > 0 for rate in rates.groups()), title
        assert re.search(rf"  {re.escape(title)}: calls not OK +0 +0 +met", stdout), title
