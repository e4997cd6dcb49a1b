"""How the server listens: channel options, TLS/mTLS credentials, binding the port."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import grpc

from service.settings import Settings

log = logging.getLogger(__name__)


class PortInUse(RuntimeError):
    """The configured address could not be bound (another server has it)."""


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """gRPC core options: port sharing, message and stream limits, keepalive policy."""
    return [
        # grpc enables SO_REUSEPORT by default, which lets a second server bind the same
        # port silently and steal traffic; only multi-process serving shares it on purpose.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(settings.min_client_ping_interval_s * 1000),
        ),
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured; mTLS with a client CA."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("tls_cert and tls_key must be given together")
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Listen on `settings.address` and return the port; PortInUse if it cannot."""
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port: int = server.add_insecure_port(settings.address)
        else:
            port = server.add_secure_port(settings.address, credentials)
    except RuntimeError as error:
        raise PortInUse(f"cannot listen on {settings.address}: {error}") from error
    if port == 0:
        raise PortInUse(f"cannot listen on {settings.address}: address in use or invalid")
    if credentials is None and not _is_loopback(settings.address):
        log.warning(
            "serving PLAINTEXT on %s, which is not a loopback address: "
            "set --tls-cert/--tls-key outside local development",
            settings.address,
        )
    return port


def _is_loopback(address: str) -> bool:
    """Whether only this machine can reach `address` (loopback host or Unix socket)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
