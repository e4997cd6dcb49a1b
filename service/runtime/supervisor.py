"""Multi-process serving: N worker processes share one port (SO_REUSEPORT).

The supervisor forks its workers before anything imports grpc in this process: grpc's
core keeps threads and polling state that do not survive a fork, so grpc is imported
by each worker only (grpc `examples/python/multiprocessing`). The supervisor forwards
SIGTERM/SIGINT to the workers, waits for their graceful shutdown and exits 0 only if
every worker did. A worker that exits on its own takes the others down with it: the
process manager restarts the whole service, instead of it running short of capacity.
With metrics on, worker i serves /metrics on metrics_port + i (one scrape target each).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from multiprocessing.context import ForkContext
from multiprocessing.process import BaseProcess
from types import FrameType

from service.settings import Settings

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ConfigurationError(ValueError):
    """Settings that multi-process serving cannot work with."""


def port_of(address: str) -> int | None:
    """The TCP port of a `host:port` address; None when it names none (e.g. a Unix socket)."""
    if address.startswith("unix"):
        return None
    _, _, port = address.rpartition(":")
    return int(port) if port.isdigit() else None


def check_settings(settings: Settings) -> None:
    """Workers can only share a port fixed in advance; port 0 would differ per worker."""
    if port_of(settings.address) == 0:
        raise ConfigurationError(
            f"--workers {settings.workers} needs an explicit port in --address "
            f"(got {settings.address!r}): each worker would bind a different ephemeral port"
        )
    if settings.metrics_port and settings.metrics_port + settings.workers - 1 > 65535:
        raise ConfigurationError(
            f"--workers {settings.workers} serve /metrics on --metrics-port and the ports "
            "after it; they must stay below 65536"
        )


def worker_settings(settings: Settings, number: int) -> Settings:
    """Worker `number`'s settings: its own /metrics port when metrics are on."""
    if not settings.metrics_port:
        return settings
    return settings.model_copy(update={"metrics_port": settings.metrics_port + number})


def supervise(settings: Settings) -> int:
    """Run `settings.workers` server processes until they stop; the exit code for main()."""
    check_settings(settings)
    if "grpc" in sys.modules:
        raise RuntimeError("grpc was imported before forking the workers")
    fork = multiprocessing.get_context("fork")
    if settings.migrate and _run_once(fork, _migrate, settings) != 0:
        log.error("migration failed; no worker started")
        return 1
    supervisor = Supervisor(fork, settings)
    return supervisor.run()


class Supervisor:
    """Starts the workers, forwards signals to them, and waits for all of them."""

    def __init__(self, context: ForkContext, settings: Settings) -> None:
        self._context = context
        self._settings = settings
        self._workers: list[BaseProcess] = []
        self._live: set[int] = set()
        self._stopping = False

    def run(self) -> int:
        """Start the workers, wait for every one to exit; 0 if all exited 0."""
        with _signals_blocked():
            # Workers inherit the blocked mask and unblock once their own handlers exist
            # (server.serve), so a signal arriving during start-up is not lost.
            for number in range(self._settings.workers):
                self._start(number)
            for signum in SIGNALS:
                signal.signal(signum, self._forward)
        log.info(
            "supervising %d workers (pids %s) on %s",
            len(self._workers),
            ", ".join(str(worker.pid) for worker in self._workers),
            self._settings.address,
        )
        self._wait_for_all()
        failed = [w for w in self._workers if w.exitcode != 0]
        for worker in failed:
            log.error("worker %s exited with code %s", worker.pid, worker.exitcode)
        log.info("all workers stopped")
        return 1 if failed else 0

    def _start(self, number: int) -> None:
        worker = self._context.Process(
            target=_serve,
            args=(worker_settings(self._settings, number),),
            name=f"taskservice-worker-{number}",
        )
        worker.start()
        assert worker.pid is not None
        self._workers.append(worker)
        self._live.add(worker.pid)

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        self._signal_live(signum)

    def _signal_live(self, signum: int) -> None:
        for pid in tuple(self._live):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                self._live.discard(pid)

    def _wait_for_all(self) -> None:
        pending = list(self._workers)
        while pending:
            ready = wait([worker.sentinel for worker in pending])
            for worker in [w for w in pending if w.sentinel in ready]:
                pending.remove(worker)
                self._reap(worker)

    def _reap(self, worker: BaseProcess) -> None:
        worker.join()
        assert worker.pid is not None
        self._live.discard(worker.pid)
        if not self._stopping:
            log.error(
                "worker %s exited (code %s); stopping the others", worker.pid, worker.exitcode
            )
            self._stopping = True
            self._signal_live(signal.SIGTERM)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _run_once(
    context: ForkContext,
    target: Callable[[Settings], None],
    settings: Settings,
) -> int | None:
    """Run `target` in a child process (keeping this one free of grpc); its exit code."""
    child = context.Process(target=target, args=(settings,), name="taskservice-migrate")
    child.start()
    child.join()
    return child.exitcode


def _migrate(settings: Settings) -> None:
    from service.storage.migrate import upgrade_configured  # imports models, and grpc

    upgrade_configured(settings)


def _serve(settings: Settings) -> None:
    """One worker: a complete server (pool, health probe) on the shared port."""
    from service.runtime import event_loop
    from service.runtime.server import PortInUse, serve  # grpc is first imported here

    try:
        event_loop.run(settings, serve(settings))
    except PortInUse as error:
        print(error, file=sys.stderr)  # noqa: T201
        sys.exit(1)
