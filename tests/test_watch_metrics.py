"""The change feed's Prometheus metrics, scraped from a real server's /metrics."""

from __future__ import annotations

import grpc

from service.runtime.server import start_server
from taskmanager.v1 import task_service_pb2, task_service_pb2_grpc
from tests.conftest import create_task, server_settings, wait_until
from tests.infra.processes import free_port
from tests.metrics_scrape import metric
from tests.watching import Watch, started

pb = task_service_pb2


async def test_feed_metrics_count_watchers_reads_deliveries_and_ends(database_url, project):
    port = free_port()
    running = await start_server(server_settings(database_url, metrics_port=port))
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            tasks = task_service_pb2_grpc.TaskServiceStub(channel)
            assert await metric(port, "taskservice_feed_watchers") == 0
            request = pb.WatchTasksRequest(project_id=project.id)
            kept = await started(Watch(tasks, request))
            cancelled = await started(Watch(tasks, request))
            assert await metric(port, "taskservice_feed_watchers") == 2

            for title in ("a", "b", "c"):
                await create_task(tasks, project.id, title=title)
            await kept.wait_for_changes(3)
            await cancelled.wait_for_changes(3)
            assert await metric(port, "taskservice_feed_events_delivered_total") == 6
            assert await metric(port, "taskservice_feed_reads_total") >= 1
            assert running.feed.read_delay > 0, "the events were read after they committed"
            assert await metric(port, "taskservice_feed_read_delay_seconds") == (
                running.feed.read_delay
            )

            await cancelled.cancel()
            await wait_until(lambda: running.feed.watchers == 1)
            assert await metric(port, "taskservice_feed_watchers") == 1
            assert await metric(port, "taskservice_feed_streams_ended_total", reason="closed") == 1

            await running.stop(grace=5)
            stopped = True
            assert (await kept.ended()).code == grpc.StatusCode.UNAVAILABLE
    finally:
        if not stopped:
            await running.stop(grace=1)
    assert running.metrics is not None
    registry = running.metrics.registry  # the listener is gone; the counts stay readable
    ended = "taskservice_feed_streams_ended_total"
    assert registry.get_sample_value(ended, {"reason": "shutdown"}) == 1
    assert registry.get_sample_value("taskservice_feed_watchers") == 0
