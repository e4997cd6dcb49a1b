"""The perf section of bench/README.md: what it measures, how, and the latest figures.

Rewritten by every full `python -m bench perf` run; edit the text here.
"""

from __future__ import annotations

from pathlib import Path

from bench import table
from bench.perf.report import (
    MAX_STREAM_RSS_GROWTH_MIB,
    TARGETS,
    profile_lines,
    sections,
    setup_lines,
    verdict_line,
)
from bench.perf.results import PerfResults
from bench.readme import README, write_section

_TARGET_LINES = "\n".join(f"- {label} >= {minimum}" for _, _, minimum, label in TARGETS)

INTRO = f"""## Performance benchmark (issue 6)

Is TaskService fast enough to be worth calling instead of a REST service? One
run seeds 100,000 tasks across 100 projects (with assignees and subtasks) and
measures, at 64 requests in flight, 10 s after a 3 s warm-up:

1. the transport ceiling: a grpc.aio server answering GetTask with a constant
   Task (`bench/perf/constant_server.py`);
2. the hand-tuned ceiling: a grpc.aio server doing one asyncpg `fetchrow` per
   GetTask (`bench/asyncpg_stream_server.py`), on asyncio and, when installed,
   on uvloop;
3. the REST peer: FastAPI + uvicorn + SQLModel, textbook style
   (`Depends(get_session)`, `pool_pre_ping=True`), serving the same row as JSON
   (`GET /tasks/{{id}}`) and creating tasks (`POST /tasks`)
   (`bench/perf/rest_app.py`);
4. TaskService itself (`python -m service serve`, default settings): GetTask
   BASIC and FULL, ListTasks (page of 50, one project), CreateTask, UpdateTask;
   and GetTask BASIC with `--workers 2`;
5. StreamTasks over all tasks against the hand-written asyncpg keyset stream,
   with the server's peak RSS;

and profiles TaskService's GetTask with py-spy under the same load, and counts
the PostgreSQL statements (round trips) each call sends.

Targets (each ratio from one run):

{_TARGET_LINES}
- StreamTasks / asyncpg stream >= 0.8, server peak RSS growth <= {MAX_STREAM_RSS_GROWTH_MIB:.0f} MiB

### How to run

    make bench BENCH=perf                          # full run; rewrites this section
    .venv/bin/python -m bench perf --keep          # reuse taskservice_perf if complete
    .venv/bin/python -m bench perf --only get_basic,handtuned,handtuned_uvloop
    .venv/bin/python -m bench perf --smoke         # tiny data, 1 s per measurement
    .venv/bin/python -m bench perf --help

A full run installs what it lacks: h2load (`nghttp2-client`) and wrk with
apt-get (as root or with `sudo -n`), FastAPI/uvicorn with pip (the `bench`
extra of pyproject.toml); it stops with a message saying what to install if it
cannot (`--no-install` never tries). `--smoke` (what `make test` runs) never
installs: it uses h2load/wrk if present and otherwise the bench's Python load
generator, `--load-generator python` forces that.

### How it measures

- **Load shape.** 64 requests in flight throughout. gRPC: 16 h2load
  processes, each one HTTP/2 connection with 4 concurrent streams (`-c 1 -m 4`),
  posting a prebuilt body file (a length-prefixed protobuf message with
  `content-type: application/grpc` and `te: trailers`). REST: one wrk thread
  with 64 keep-alive connections and a Lua script. Warm-up is a separate run
  of the same command whose figures are dropped.
- **Varying ids.** h2load posts one fixed body per process, so each of the 16
  processes gets its own: 16 task ids (live tasks with an assignee and
  subtasks, evenly spread over the table), 16 projects, 16 assignees. A single
  id would do for reads (every row is cached either way), but 64 concurrent
  UpdateTasks of one row would measure PostgreSQL's row-lock queue rather than
  the service. wrk cycles through the same 16 ids.
- **Pinning.** Each load-generator process runs under `taskset -c <last CPU>`;
  servers and PostgreSQL are not pinned (with 2 cores, pinning them to the other
  core would starve them), so the generator shares its core with whatever the
  scheduler puts there. The CPU table shows who used what: the server's process
  tree, all `postgres` processes, the generator processes (their rusage) and
  the machine as a whole (`/proc/stat`); "other" is busy time none of them
  accounts for: kernel networking, or another program. The machine is shared
  (tests, builds), so before each measurement a full run waits up to
  `--quiet-wait` seconds (120) for 3 quiet seconds in a row, repeats a
  measurement during which "other" exceeded 0.3 cores (up to `--attempts`, 3;
  the least disturbed counts) and warns about any that stayed disturbed.
- **gRPC errors and h2load.** h2load counts a request as succeeded on an HTTP
  2xx status; a gRPC error is an HTTP 200 with `grpc-status` != 0 in the
  trailers, which h2load never reads. The run shows this with GetTask of a
  missing id (h2load reports every NOT_FOUND as a success) and guards against
  it three ways: before each load a Python client sends every body once and
  checks status and answer (e.g. the id asked for, a full page of the right
  project); reads answer with fixed-size messages, so `data bytes / response
  size` counts the responses that carried a message and the rest are errors;
  writes are checked against the database (rows inserted for CreateTask and
  POST, versions bumped for UpdateTask; exact up to the 64 calls in flight
  when the generator stops). Any error fails the run.
- **Same answer.** TaskService's GetTask BASIC responses must be byte for byte
  the hand-tuned server's for the same ids.
- **Workers.** `--workers 2` forks two server processes sharing the port with
  SO_REUSEPORT; the kernel spreads the 16 connections between them. The
  "bound" row divides the CPUs by the cores the one-worker GetTask run kept
  busy (server with grpc's thread, PostgreSQL, h2load, kernel): with 2 CPUs,
  a second worker can at most add what the first left idle.
- **Streams.** As in the pagination benchmark: each server is a fresh process,
  the fastest of the runs counts for throughput and the worst for memory
  (VmHWM growth over the stream); the client is the bench process.
- **Writes** run last; afterwards the tasks they created, the audit events and
  idempotency keys are deleted again so `--keep` can reuse the database.
- **Profile.** `py-spy record -f raw --nolineno --nonblocking` samples the
  one-worker server for 10 s while h2load keeps 64 GetTask BASIC calls in
  flight; the raw stacks stay in `bench/results/` (not in git). Time in C
  (grpc's Cython core, asyncpg's protocol, protobuf) shows as the Python frame
  that called it. A `py-spy --native` look showed what the big ones are:
  `_SelectorSocketTransport.write` is the `send()` system calls to PostgreSQL
  (one per statement; on loopback they include the kernel's delivery to the
  backend), `Handle._run` mostly grpc.aio's Cython writing responses to the
  client (`sendmsg`) and waking its poller (`eventfd`), `Thread.run` grpc's
  polling thread.
  Sync SQLAlchemy code runs in greenlets, which py-spy shows as separate stacks,
  so inclusive shares of service functions leave that part out.
- **Statements per call.** TaskService (`service.runtime.server.start_server`) and the
  REST peer (`make_app`) also run inside the bench process once, after the
  load runs, with listeners on their engines: SQLAlchemy's
  `before_cursor_execute` plus asyncpg's query logger (which sees what the
  driver sends by itself: the pre-ping's `BEGIN; ;  ROLLBACK` and transaction
  control). Each call is made 3 times to warm pools and caches, then 10 times
  counted. A client deadline would add one statement to a write (`set_config`
  of `statement_timeout`; reads run outside a transaction and set none);
  h2load sends none.
"""


def render(r: PerfResults) -> str:
    """The perf section for these results."""
    setup = "\n".join(f"- {line}" for line in setup_lines(r))
    profile = "\n".join(profile_lines(r)) or "Not profiled in this run."
    return f"""{INTRO}
### Latest results

{setup}

{table.markdown_table(sections(r))}
{verdict_line(r)}

#### Where GetTask's time goes

```text
{profile}
```
"""


def write_perf_readme(r: PerfResults, path: Path = README) -> None:
    """Rewrite the perf section of the README with these results."""
    write_section("perf", render(r), path)
