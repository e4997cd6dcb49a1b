"""The benches run end to end in smoke mode (tiny data, ~1 s per measurement); timings are
not checked. Also the bench's parsers of h2load and wrk output, on canned reports, and its
README regions."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bench.__main__ import COMMANDS, split_command
from bench.core.report import read_regions, write_regions
from bench.perf import loadgen, usage
from bench.perf.calls import HttpRequest, grpc_frame, spread
from bench.perf.config import LABELS
from service.settings import normalise_database_url

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TIMEOUT = 300
PAGINATION_HEADINGS = (
    "ListTasks pagination",
    "SQL OFFSET baseline",
    "StreamTasks",
    "Search filters",
    "EXPLAIN",
)
PERF_HEADINGS = (
    "== Throughput",
    "== Targets (ratios of this run)",
    "== GetTask BASIC on ONE grpc.aio channel",
    "== StreamTasks",
    "== Tracing cost",
    "== CPU during each measurement",
    "== PostgreSQL statements per call",
    "== Checks",
    "== What the load generators counted",
    "== Where GetTask's time goes",
)
FEED_HEADINGS = (
    "== Delivery to another process",
    "commit-to-delivery p99",
    "== CPU in the measured window",
    "== Idle watchers",
)
H2LOAD_OUTPUT = """
finished in 1.00s, 3648.00 req/s, 371.88KB/s
requests: 3648 total, 3652 started, 3648 done, 3640 succeeded, 5 failed, 2 errored, 1 timeout
status codes: 3640 2xx, 0 3xx, 3 4xx, 5 5xx
traffic: 371.88KB (380807) total, 295.73KB (302829) headers (space savings 35.15%), \
39.06KB (40000) data
"""
WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:8000
  1 threads and 64 connections
  757 requests in 1.00s, 312.33KB read
  Non-2xx or 3xx responses: 7
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:    756.12
Transfer/sec:    311.95KB
"""


async def _run_bench(url: str, database: str, *args: str) -> tuple[int, str, str]:
    """Run a bench in its own process group, killed whole on timeout."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench", *args),
        *("--database-url", url, "--database-name", database),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # the bench's server processes join this group
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        pytest.fail(f"bench {' '.join(args)} took over {TIMEOUT} s")
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def _admin(url: str, sql: str, *args: Any) -> Any:
    dsn = make_url(normalise_database_url(url)).set(drivername="postgresql")
    admin = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        return await admin.fetchval(sql, *args)
    finally:
        await admin.close()


async def _smoke(*args: str) -> str:
    """Run a bench with --smoke on a database of its own; its stdout, once it passed."""
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_URL)
    database = f"taskservice_bench_smoke_{uuid.uuid4().hex[:12]}"
    readme = (ROOT / "bench" / "README.md").read_text()
    try:
        code, stdout, stderr = await _run_bench(url, database, *args, "--smoke")
        left = await _admin(url, "SELECT 1 FROM pg_database WHERE datname = $1", database)
    finally:
        await _admin(url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert code == 0, f"{stdout}\n{stderr}"
    assert "Checks FAILED" not in stdout
    assert left is None, "the smoke run left its database behind"
    assert (ROOT / "bench" / "README.md").read_text() == readme, "a smoke run wrote the README"
    return stdout


@pytest.mark.timeout(TIMEOUT + 30)
async def test_pagination_bench_smoke_runs_prints_the_table_and_drops_its_database() -> None:
    stdout = await _smoke("pagination")
    for heading in PAGINATION_HEADINGS:
        assert heading in stdout


@pytest.mark.timeout(TIMEOUT + 30)
async def test_perf_bench_smoke_measures_everything_with_h2load_wrk_and_one_channel() -> None:
    stdout = await _smoke("perf")
    for heading in PERF_HEADINGS:
        assert heading in stdout
    for label in LABELS.values():
        assert f"{label} " in stdout, f"{label} not measured"
    assert "(h2load)" in stdout
    assert "(wrk)" in stdout
    assert "GetTask BASIC bytes equal the hand-tuned server's" in stdout
    assert "h2load blind to grpc-status; bench catches it" in stdout
    assert "writes seen in the database" in stdout
    assert "TaskService --max-concurrent-streams 2000" in stdout
    assert "1,000 in flight" in stdout
    assert "p99" in stdout
    assert "busy samples" in stdout, "GetTask was not profiled"


@pytest.mark.timeout(TIMEOUT + 30)
async def test_feed_bench_smoke_delivers_events_across_processes_on_one_listen_connection() -> None:
    stdout = await _smoke("feed")
    for heading in FEED_HEADINGS:
        assert heading in stdout
    samples = re.search(r"  latency samples +([\d,]+)", stdout)
    assert samples is not None, stdout
    assert int(samples.group(1).replace(",", "")) > 0
    # Server B's /metrics was scraped: its feed read and sent WatchTasks messages.
    for counter in ("WatchTasks messages sent by server B", "change-feed reads by server B"):
        found = re.search(rf"  {counter} +([\d,]+)", stdout)
        assert found is not None, stdout
        assert int(found.group(1).replace(",", "")) > 0, counter
    for group in ("server A", "server B", "PostgreSQL", "writer processes (1)"):
        assert re.search(rf"  {re.escape(group)} +[\d.]+ cores", stdout), group
    assert re.search(r"  LISTEN connections of server B +1 +1 +met", stdout), stdout


def test_bench_without_a_command_runs_the_pagination_bench() -> None:
    assert split_command(["--smoke"]) == ("pagination", ["--smoke"])
    assert split_command(["perf", "--keep"]) == ("perf", ["--keep"])
    assert split_command(["feed", "--smoke"]) == ("feed", ["--smoke"])


def test_h2load_report_is_parsed_and_empty_replies_count_as_grpc_failures() -> None:
    report = loadgen.parse_h2load(H2LOAD_OUTPUT)
    assert (report.succeeded, report.failed, report.data_bytes) == (3640, 8, 40000)
    assert report.status_other == 8
    assert report.seconds == pytest.approx(1.0)
    # 40,000 data bytes are 400 responses of 100 bytes: the other 3,240 carried no message.
    assert loadgen.grpc_failures(report, 100) == 3240


def test_wrk_report_is_parsed() -> None:
    run = loadgen.parse_wrk(WRK_OUTPUT)
    # 757 responses, 7 of them non-2xx/3xx, and 3 socket errors on top.
    assert (run.completed, run.failed, run.ok) == (750, 10, 750)
    assert run.seconds == pytest.approx(1.0)


def test_wrk_script_cycles_through_requests() -> None:
    requests = [HttpRequest("GET", "/tasks/1"), HttpRequest("POST", "/tasks", "{}")]
    script = loadgen.wrk_script(requests)
    assert '{"GET", "/tasks/1", ""}' in script
    assert '{"POST", "/tasks", "{}"}' in script


def test_grpc_frames_and_spread_ids() -> None:
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert spread(list(range(1, 101)), 4) == (1, 26, 51, 76)
    assert spread([7, 8], 3) == (7, 8, 7)


def test_readme_regions_are_replaced_one_at_a_time_and_the_prose_kept(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    write_regions(path, {"pagination:results": "old"})
    text = path.read_text()
    path.write_text(f"# Prose by hand\n\n{text}\nMore prose.\n")
    write_regions(path, {"perf:results": "first"})
    write_regions(path, {"pagination:results": "new"})
    text = path.read_text()
    assert read_regions(text) == {"pagination:results": "new", "perf:results": "first"}
    assert text.startswith("# Prose by hand\n")
    assert "More prose.\n" in text


def test_the_readme_has_a_results_region_per_bench() -> None:
    regions = read_regions((ROOT / "bench" / "README.md").read_text())
    assert set(regions) == {f"{name}:results" for name in COMMANDS}


def test_postgres_cpu_counts_backends_that_start_and_not_the_past_of_those_that_exit() -> None:
    def at(wall: float, postgres: dict[int, float]) -> usage.Snapshot:
        return usage.Snapshot(wall, 0.0, postgres, 0.0, 0.0, 0.0)

    # pid 1 (postmaster) used 1 s, pid 2 exited with 50 s behind it, pid 3 started: 2 s.
    used = usage.between(at(0.0, {1: 10.0, 2: 50.0}), at(10.0, {1: 11.0, 3: 2.0}))

    assert used.postgres == pytest.approx(0.3)
