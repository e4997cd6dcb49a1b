"""Client channels as the README tells clients to open them: with the published service config."""

from __future__ import annotations

from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
SERVICE_CONFIG = ROOT / "protos" / "taskmanager" / "v1" / "service_config.json"


def retrying_channel(address: str) -> grpc.aio.Channel:
    """A grpc.aio channel to `address` that applies the published retry policy."""
    return grpc.aio.insecure_channel(
        address, options=[("grpc.service_config", SERVICE_CONFIG.read_text())]
    )
