"""bench/README.md: one section per benchmark (how to run, how it measures, latest figures).

Each full run rewrites its own section between its markers and keeps the
others as they are (`--smoke` runs leave the file alone), so edit the text
here and in bench/perf/readme.py, not in the README.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.report import (
    MAX_PAGE_RATIO,
    MAX_RSS_GROWTH_MIB,
    MIN_STREAM_RATIO,
    Results,
    markdown_table,
    missed_targets,
    plans_text,
    seeding_text,
)

README = Path(__file__).resolve().parent / "README.md"
SECTIONS = ("pagination", "perf")
HEADER = """# TaskService benchmarks

Two benchmarks; each seeds a PostgreSQL database of its own (Alembic
migrations, then binary `COPY`), runs the real server as a subprocess
(`python -m service serve`) and prints a table of figures, targets and checks:

- `python -m bench pagination` (or just `python -m bench`): keyset pages vs.
  `OFFSET`, StreamTasks vs. asyncpg, search indexes; 1,000,000 tasks;
- `python -m bench perf` (issue 6): unary RPC throughput at 64 requests in
  flight against a transport ceiling, a hand-tuned asyncpg server and a
  FastAPI + SQLModel peer; StreamTasks; `--workers 2`; 100,000 tasks.

    make bench                               # both, full size; each rewrites its section below
    make bench BENCH=perf BENCH_ARGS=--keep  # one of them, reusing its seeded database
    .venv/bin/python -m bench perf --smoke   # seconds, throw-away database; what `make test` runs
    .venv/bin/python -m bench perf --help

Both need PostgreSQL (default `postgresql://postgres@127.0.0.1:5432/postgres`,
or `TEST_DATABASE_URL`, or `--database-url`) with the right to create
databases. A full run leaves its database in place for `--keep`; `--drop`
removes it; `--smoke` always uses a throw-away one. Exit status 1 means a
correctness check failed; missed performance targets are reported only.
"""
PLACEHOLDER = "_Not run yet._"

INTRO = f"""## Pagination benchmark

Measures what keyset pagination buys TaskService on a large table, in one run:

- median latency of `ListTasks` page 1 vs. a deep page (page 2,000 of 50 tasks),
  and the same for an `OFFSET` query written directly in SQL, the baseline the
  page tokens beat;
- `StreamTasks` throughput over every task, received by a client in another
  process, against a hand-written asyncpg keyset stream, and the server's
  peak RSS before and after the stream;
- `ListTasks` with the `tags` and `title_contains` filters, with the `EXPLAIN`
  plans showing their GIN indexes in use.

Targets: deep / first page latency <= {MAX_PAGE_RATIO}; server peak RSS growth while
streaming <= {MAX_RSS_GROWTH_MIB:.0f} MiB; StreamTasks throughput >= {MIN_STREAM_RATIO:.0%} of the
asyncpg keyset stream measured in the same run; both search plans use their index.

### How to run

    make bench BENCH=pagination                          # 1,000,000 tasks, 1,000 projects
    .venv/bin/python -m bench pagination --keep          # reuse taskservice_bench if complete
    .venv/bin/python -m bench pagination --smoke         # 2,000 tasks, seconds
    .venv/bin/python -m bench pagination --help          # sizes, repetitions, database name

A full run leaves its database (`taskservice_bench`, about 450 MB) in place for
`--keep`; add `--drop` to remove it. `--smoke` always uses a database of its
own (`taskservice_bench_smoke_<random>`) and drops it.

### How it measures

- **Seeding.** The bench creates its own database and migrates it with
  Alembic (`service.storage.migrate.upgrade`, the only schema path): first to 0001
  (tables), then the rows go in by binary `COPY` (asyncpg
  `copy_records_to_table`, 50,000 rows a batch), then `upgrade head` builds the
  0002 keyset and GIN indexes on the loaded table (and applies every later
  migration), then `VACUUM ANALYZE`. All tasks are live (not soft-deleted).
  Create times span two years (jittered against id order); 60 % of tasks are
  assigned, 20 % are subtasks, each has 0-3 common tags; one task in 1,000
  has the tag `security-audit` and another one in 1,000 has "Quasar" in its
  title, the targets of the two searches.
- **Servers.** The real server runs as `python -m service serve` in its own
  process (memory read from `/proc/<pid>/status`: VmHWM is the peak, VmRSS
  the current size); the bench process is the gRPC client. Readiness is the
  gRPC health check, polled with a bounded retry.
- **Pages.** The token of the deep page is obtained by walking every page
  before it. Then page 1 and the deep page are requested alternately,
  `--repeat` times each, and the medians compared. The OFFSET baseline runs
  `SELECT ... FROM tasks WHERE project_id IS NOT NULL AND delete_time IS NULL
  ORDER BY create_time DESC, id DESC LIMIT 50 OFFSET n` through asyncpg the
  same way, and its deep page must hold the same rows as the ListTasks one.
- **Streams.** Each stream server is started fresh, so its VmHWM before the
  stream is its start-up peak. The two servers take turns, `--stream-runs`
  times each (2 on a full run); the fastest run of each counts for
  throughput (the least disturbed by anything else on the machine) and the
  worst for memory. The baseline is `bench/asyncpg_stream_server.py`:
  the same keyset order (`create_time, id`, live tasks), batch size and
  protobuf `Task` messages, built straight from asyncpg rows, one pooled
  connection per batch, in a grpc.aio server of its own process. Both streams
  must deliver every task (same count and id sum), and their first batches
  must be the same messages byte for byte. The CPU time each server and the
  client used during the stream (from `/proc/<pid>/stat`) shows which side is
  the bottleneck.
- **Searches.** `ListTasks` page 1 with `tags=["security-audit"]` and with
  `title_contains="quasar"`, timed through the server; the equivalent SQL
  (`tags @> '["security-audit"]'::jsonb`, `title ILIKE '%quasar%'`, both with
  `delete_time IS NULL` and the service's order and limit) is shown
  with `EXPLAIN (ANALYZE, BUFFERS)`, and also the generic plan of the
  parameterised form the service sends, which a cached prepared statement
  may switch to.
"""


def render(r: Results) -> str:
    """The pagination section of the README for these results."""
    missed = missed_targets(r)
    summary = "All targets met." if not missed else "Targets missed: " + "; ".join(missed) + "."
    machine = "\n".join(f"- {line}" for line in r.machine.lines())
    return f"""{INTRO}
### Latest results

{r.cfg.tasks:,} tasks, {r.cfg.projects:,} projects, {r.cfg.repeat} repetitions per median.

{machine}
- Seeding: {seeding_text(r.seeding)}

{markdown_table(r)}
{summary}

#### Plans

```text
{plans_text(r)}
```
"""


def write_readme(r: Results, path: Path = README) -> None:
    """Rewrite the pagination section of the README with these results."""
    write_section("pagination", render(r), path)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"


def read_sections(text: str) -> dict[str, str]:
    """The body of every marked section of a README."""
    found = {}
    for name in SECTIONS:
        begin, end = _markers(name)
        match = re.search(re.escape(begin) + r"\n(.*?)\n" + re.escape(end), text, re.DOTALL)
        if match:
            found[name] = match.group(1)
    return found


def write_section(name: str, body: str, path: Path = README) -> None:
    """Replace one section of the README, keeping the others (the header is regenerated)."""
    if name not in SECTIONS:
        raise ValueError(f"unknown README section {name!r}")
    sections = read_sections(path.read_text()) if path.exists() else {}
    sections[name] = body.strip()
    parts = [HEADER]
    for section in SECTIONS:
        begin, end = _markers(section)
        parts.append(f"{begin}\n{sections.get(section, PLACEHOLDER)}\n{end}\n")
    path.write_text("\n".join(parts))
