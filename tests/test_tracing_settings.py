"""Tracing is off unless configured; what it cannot honour is a start-up error."""

from __future__ import annotations

import os

import pytest

from service.runtime.server import TaskServer
from service.runtime.tracing import start_tracing, tracing_enabled
from service.settings import Settings


def test_tracing_is_off_unless_configured() -> None:
    settings = Settings()
    assert not tracing_enabled(settings, {})
    assert start_tracing(settings, {}) is None
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER"):
        assert tracing_enabled(settings, {name: "x"})
    assert tracing_enabled(Settings(tracing_endpoint="http://127.0.0.1:1"), {})
    assert not tracing_enabled(settings, {"OTEL_SERVICE_NAME": "x", "OTEL_SDK_DISABLED": "true"})
    assert not tracing_enabled(settings, {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_enabled(Settings(tracing="off"), {"OTEL_SERVICE_NAME": "x"})
    assert tracing_enabled(Settings(tracing="on"), {})


def test_an_exporter_or_protocol_the_service_lacks_is_a_start_up_error() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        start_tracing(Settings(tracing="on"), {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="http/protobuf"):
        start_tracing(Settings(tracing="on"), {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})


async def test_off_by_default_the_server_wraps_no_tracing_layer(server: TaskServer) -> None:
    assert server.tracing is None
    assert not [k for k in os.environ if k.startswith("OTEL_")], "the test run sets OTEL_*"
