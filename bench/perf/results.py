"""What a perf run measured, as plain data (the report and README are rendered from this)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.database import SeedReport
from bench.machine import Machine
from bench.perf.calls import Targets
from bench.perf.config import PerfConfig
from bench.perf.loadgen import LoadRun
from bench.perf.profile import Profile
from bench.perf.roundtrips import StatementCount
from bench.perf.tools import Tools
from bench.perf.usage import Usage
from bench.results import StreamRun

# key -> label of every throughput measurement, in the order they are reported.
LABELS = {
    "constant": "grpc.aio, constant Task (transport ceiling)",
    "handtuned": "grpc.aio + asyncpg fetchrow (hand-tuned, asyncio)",
    "handtuned_uvloop": "grpc.aio + asyncpg fetchrow (hand-tuned, uvloop)",
    "rest_get": "FastAPI + SQLModel GET /tasks/{id} (REST peer)",
    "get_basic": "TaskService GetTask (BASIC)",
    "get_full": "TaskService GetTask (FULL)",
    "list": "TaskService ListTasks (page of 50, one project)",
    "workers2": "TaskService GetTask (BASIC), --workers 2",
    "rest_post": "FastAPI + SQLModel POST /tasks (REST peer)",
    "create": "TaskService CreateTask",
    "update": "TaskService UpdateTask (description)",
}


@dataclass(frozen=True)
class Measurement:
    """One call under load on one server."""

    key: str
    run: LoadRun
    usage: Usage
    sample: str  # how the Python client's sample calls went, e.g. "16/16 OK"
    sample_ok: bool
    effect: int | None = None  # writes the database shows for the measured run

    @property
    def label(self) -> str:
        """Human name of the measurement."""
        return LABELS[self.key]

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return self.run.rate


@dataclass(frozen=True)
class BlindSpot:
    """h2load against calls that all fail at the gRPC level (GetTask of a missing id)."""

    run: LoadRun
    sample: str

    @property
    def shown(self) -> bool:
        """h2load called them succeeded, and the bench's data check found every one."""
        run = self.run
        return run.completed > 0 and run.failed == 0 and run.hidden_failures == run.completed


@dataclass(frozen=True)
class PerfResults:
    """Everything one perf run measured."""

    cfg: PerfConfig
    machine: Machine
    seeding: SeedReport
    tools: Tools
    rest_stack: str
    targets: Targets
    measurements: tuple[Measurement, ...]
    streams: tuple[StreamRun, ...]
    baselines: tuple[StreamRun, ...]
    same_as_handtuned: bool | None
    blind_spot: BlindSpot | None
    profile: Profile | None
    statements: tuple[StatementCount, ...]

    def get(self, key: str) -> Measurement | None:
        """The measurement `key`, if it ran."""
        return next((m for m in self.measurements if m.key == key), None)
