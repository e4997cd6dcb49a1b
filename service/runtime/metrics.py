"""Prometheus metrics: gRPC counters and latency, pool and admission gauges, /metrics.

Every server gets its own CollectorRegistry, so several servers in one process
(tests, benchmarks) never collide, and its own HTTP listener, stopped with it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Protocol
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from service.runtime.transport import PortInUse
from service.settings import Settings

log = logging.getLogger(__name__)

# Local RPCs against PostgreSQL take about a millisecond: the default buckets
# (5 ms and up) would put nearly all of them in the first one.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LABELS = ("grpc_type", "grpc_service", "grpc_method")


_GO_SPELLINGS = {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


def _go_code_name(code: grpc.StatusCode) -> str:
    """The code as Go spells it (codes.Code.String()): go-grpc-prometheus's grpc_code values."""
    return _GO_SPELLINGS.get(code) or "".join(part.capitalize() for part in code.name.split("_"))


GO_CODE_NAMES = {code: _go_code_name(code) for code in grpc.StatusCode}


class MethodMetrics:
    """The label children of one method, resolved once: per-RPC updates skip label lookups."""

    __slots__ = ("_handled", "_labels", "_metrics", "msg_sent", "started")

    def __init__(self, metrics: RpcMetrics, labels: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self.started = metrics.started.labels(*labels)
        self.msg_sent = metrics.msg_sent.labels(*labels)
        self._handled: dict[grpc.StatusCode, tuple[Counter, Histogram]] = {}

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        """Count a finished RPC and observe its duration under its status code."""
        children = self._handled.get(code)
        if children is None:
            labels = (*self._labels, GO_CODE_NAMES[code])
            children = (
                self._metrics.handled.labels(*labels),
                self._metrics.handling_seconds.labels(*labels),
            )
            self._handled[code] = children
        children[0].inc()
        children[1].observe(seconds)


class RpcMetrics:
    """grpc_server_* metrics, as go-grpc-prometheus names and labels them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            _LABELS,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*_LABELS, "grpc_code"),
            registry=registry,
        )
        # Unlike go-grpc-prometheus, latency is also split by grpc_code (the issue
        # asks for it); queries that sum by method see the usual series.
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            (*_LABELS, "grpc_code"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server.",
            _LABELS,
            registry=registry,
        )
        self._methods: dict[tuple[str, str], MethodMetrics] = {}

    def method(self, full_method: str, grpc_type: str) -> MethodMetrics:
        """The metrics of `/package.Service/Method` called as `grpc_type` (cached)."""
        key = (full_method, grpc_type)
        found = self._methods.get(key)
        if found is None:
            service, _, name = full_method.lstrip("/").rpartition("/")
            found = self._methods[key] = MethodMetrics(self, (grpc_type, service, name))
        return found


class AdmissionMetrics:
    """The admission gate's waits and rejections (service.runtime.admission)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.wait_seconds = Histogram(
            "taskservice_admission_wait_seconds",
            "Seconds admitted RPCs (and stream batches) waited in the admission queue; "
            "calls admitted at once are not observed.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "taskservice_admission_rejected",
            "RPCs the admission gate refused: queue_full and deadline (RESOURCE_EXHAUSTED), "
            "draining (UNAVAILABLE while the server shuts down).",
            ("reason",),
            registry=registry,
        )


class AdmissionGauges(Protocol):
    """What the admission gate reports at scrape time."""

    @property
    def executing(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def limit(self) -> int: ...
    @property
    def queue_limit(self) -> int: ...


class AdmissionCollector(Collector):
    """The gate's occupancy, read at scrape time (no cost per RPC)."""

    def __init__(self, gate: AdmissionGauges) -> None:
        self._gate = gate

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Executing and queued RPCs, and the bounds of both."""
        gate = self._gate
        yield _admission("executing", "RPCs (and stream batches) holding a slot.", gate.executing)
        yield _admission("queue_depth", "RPCs waiting in the admission queue.", gate.queued)
        yield _admission("limit", "Slots: RPCs that may execute at once.", gate.limit)
        yield _admission("queue_limit", "RPCs the admission queue holds.", gate.queue_limit)


def _admission(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"taskservice_admission_{name}", documentation, value=value)


class FeedGauges(Protocol):
    """What the change feed (service.storage.change_feed) counts, read at scrape time."""

    @property
    def watchers(self) -> int: ...

    reads: int
    events_delivered: int
    streams_ended: dict[str, int]
    read_delay: float


class FeedCollector(Collector):
    """The change feed's watchers, reads and deliveries, read at scrape time (the feed
    keeps plain counts: nothing per event beyond an addition)."""

    def __init__(self, feed: FeedGauges) -> None:
        self._feed = feed

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Watchers now; reads, delivered events and ended streams so far."""
        feed = self._feed
        yield GaugeMetricFamily(
            "taskservice_feed_watchers",
            "WatchTasks streams fed by this process's change-feed reader.",
            value=feed.watchers,
        )
        yield CounterMetricFamily(
            "taskservice_feed_reads",
            "Reads of new change-feed events, each shared by every watcher of the process.",
            value=feed.reads,
        )
        yield CounterMetricFamily(
            "taskservice_feed_events_delivered",
            "Change events handed to WatchTasks streams (an event sent to n streams counts n).",
            value=feed.events_delivered,
        )
        yield GaugeMetricFamily(
            "taskservice_feed_read_delay_seconds",
            "At the reader's last read that found events: seconds since its oldest event "
            "committed (the feed's lag behind commits; database clock against this host's).",
            value=feed.read_delay,
        )
        ended = CounterMetricFamily(
            "taskservice_feed_streams_ended",
            "Watchers that stopped being fed, by reason: shutdown, too_slow "
            "(RESOURCE_EXHAUSTED), expired (history purged), closed (the client went).",
            labels=("reason",),
        )
        for reason, count in sorted(dict(feed.streams_ended).items()):
            ended.add_metric((reason,), count)
        yield ended


class PoolCollector(Collector):
    """Database pool gauges, read from the engine's current pool at scrape time."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Size, idle, checked-out and overflow connections; nothing for unsized pools."""
        # engine.dispose() swaps in a new pool, so never keep a reference to one.
        pool = self._engine.sync_engine.pool
        if not isinstance(pool, QueuePool):
            return
        yield _gauge("size", "Connections the pool keeps (pool_size).", pool.size())
        yield _gauge("checked_in", "Idle connections in the pool.", pool.checkedin())
        yield _gauge("checked_out", "Connections in use.", pool.checkedout())
        # QueuePool counts overflow from -pool_size up; only the part above zero is overflow.
        yield _gauge("overflow", "Connections open beyond pool_size.", max(pool.overflow(), 0))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"taskservice_db_pool_{name}", documentation, value=value)


class Metrics:
    """One server's registry (RPC metrics and pool gauges) and its /metrics listener."""

    def __init__(self, engine: AsyncEngine) -> None:
        # go-grpc-prometheus has no *_created series; they would double the series count.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.rpc = RpcMetrics(self.registry)
        self.admission = AdmissionMetrics(self.registry)
        self.registry.register(PoolCollector(engine))
        self._listener: tuple[WSGIServer, threading.Thread] | None = None

    def watch_admission(self, gate: AdmissionGauges) -> None:
        """Report `gate`'s occupancy at every scrape."""
        self.registry.register(AdmissionCollector(gate))

    def watch_feed(self, feed: FeedGauges) -> None:
        """Report the change feed's counts at every scrape."""
        self.registry.register(FeedCollector(feed))

    @property
    def port(self) -> int:
        """The port /metrics is served on; 0 while not serving."""
        return self._listener[0].server_port if self._listener else 0

    def serve(self, settings: Settings) -> int:
        """Serve /metrics on `settings.metrics_port` (a daemon thread); PortInUse if taken."""
        host, port = metrics_host(settings.address), settings.metrics_port
        try:
            self._listener = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise PortInUse(f"cannot serve metrics on {host}:{port}: {error}") from error
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop the listener and release its port (idempotent)."""
        if self._listener is None:
            return
        httpd, thread = self._listener
        self._listener = None
        # shutdown() waits for the serving loop's next poll (up to 0.5 s): not on the loop.
        await asyncio.to_thread(httpd.shutdown)
        httpd.server_close()
        thread.join()


def metrics_host(address: str) -> str:
    """The host of the gRPC address, so /metrics is exactly as reachable as the API."""
    if address.startswith("unix"):
        return "0.0.0.0"
    return address.rsplit(":", 1)[0].strip("[]")
