"""Process settings, read from TASKSERVICE_* environment variables and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/taskservice.db"


def normalise_database_url(url: str) -> str:
    """Map `postgres://` and `postgresql://` URLs to the asyncpg driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


class Settings(BaseSettings):
    """Everything the server can be configured with."""

    model_config = SettingsConfigDict(env_prefix="TASKSERVICE_", extra="ignore")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; postgres:// and postgresql:// mean asyncpg.",
    )
    address: str = Field(default="[::]:50051", description="host:port the gRPC server binds.")
    pool_size: int = Field(default=10, ge=1, description="Connections kept in the pool.")
    max_overflow: int = Field(default=10, ge=0, description="Extra connections under load.")
    pool_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a pooled connection."
    )
    pool_pre_ping: bool = Field(
        default=False,
        description="Check EVERY pooled connection before use (an extra round trip per "
        "RPC); pool_ping_after_idle usually suffices.",
    )
    pool_ping_after_idle: float = Field(
        default=10.0,
        ge=0,
        description="Check a pooled connection before use if it sat idle this many seconds "
        "(0: never); connections lost while busy are answered UNAVAILABLE and replaced.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Root log level."
    )
    shutdown_grace: float = Field(
        default=10.0,
        ge=0,
        description="Seconds in-flight RPCs get to finish once the server stops accepting "
        "calls (after drain_delay).",
    )
    drain_delay: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a server keeps serving after SIGTERM with health NOT_SERVING, "
        "so balancers stop sending before it refuses new calls (UNAVAILABLE); "
        "SIGINT skips it.",
    )
    page_token_secret: SecretStr = Field(
        default=SecretStr("taskservice-development-page-token-key"),
        description="Key that encrypts and signs page/resume tokens; same on every replica.",
    )
    migrate: bool = Field(
        default=False, description="Run pending Alembic migrations before serving."
    )
    # --- security -------------------------------------------------------------
    tls_cert: Path | None = Field(default=None, description="PEM server certificate: serve TLS.")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle: require and verify client certificates (mTLS)."
    )
    auth_tokens: dict[str, str] = Field(
        default_factory=dict,
        description='Bearer token -> principal, as JSON ({"s3cret":"billing"}); auth is on '
        "when this or auth_tokens_file gives any token.",
    )
    auth_tokens_file: Path | None = Field(
        default=None,
        description="JSON file of bearer token -> principal (merged with auth_tokens).",
    )
    read_only_principals: list[str] = Field(
        default_factory=list,
        description="Principals that may only read (writes get PERMISSION_DENIED); JSON list.",
    )
    max_receive_message_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest request message accepted."
    )
    max_concurrent_streams: int = Field(
        default=10_000,
        ge=1,
        description="HTTP/2 streams (concurrent RPCs) per connection; above it the transport "
        "refuses calls (UNAVAILABLE, no details), so keep it far above the admission bound.",
    )
    max_concurrent_rpcs: int | None = Field(
        default=None,
        ge=1,
        description="RPCs executing at once in this process (a stream counts while it reads "
        "a batch); unset: pool_size + max_overflow.",
    )
    max_queued_rpcs: int = Field(
        default=1000,
        ge=0,
        description="RPCs waiting for max_concurrent_rpcs (while their deadline allows); "
        "beyond it RESOURCE_EXHAUSTED with RetryInfo.",
    )
    keepalive_time_s: float = Field(
        default=7200.0, gt=0, description="Seconds between server keepalive pings."
    )
    keepalive_timeout_s: float = Field(
        default=20.0, gt=0, description="Seconds to wait for a keepalive ping's ack."
    )
    min_client_ping_interval_s: float = Field(
        default=300.0, ge=0, description="Minimum seconds between client pings without data."
    )
    # --- observability ----------------------------------------------------------
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 turns it off."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as readable text or one JSON object each."
    )
    rpc_log: Literal["failed", "all"] = Field(
        default="failed",
        description="Which RPCs get a log line: those that end with an error status, or all "
        "(an access log; costs ~20% of a GetTask's CPU).",
    )
    # --- operations -------------------------------------------------------------
    workers: int = Field(
        default=1, ge=1, description="Server processes sharing the port (SO_REUSEPORT)."
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto", description="Event loop: uvloop when installed (auto), or force one."
    )
    health_probe_interval: float = Field(
        default=5.0, gt=0, description="Seconds between database health probes."
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @property
    def admission_limit(self) -> int:
        """RPCs executing at once: max_concurrent_rpcs, else what the pool can serve."""
        return self.max_concurrent_rpcs or self.pool_size + self.max_overflow

    @property
    def is_sqlite(self) -> bool:
        """True when the embedded SQLite backend is configured."""
        return self.database_url.startswith("sqlite")
