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
        default=10.0, ge=0, description="Seconds in-flight RPCs get to finish on SIGTERM."
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
        default=100, ge=1, description="HTTP/2 streams (concurrent RPCs) per connection."
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

    # --- change feed (WatchTasks) ----------------------------------------------------
    listen_database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL the change feed LISTENs on, one session per process "
        "(default: database_url). Behind a transaction-mode pooler (PgBouncer) point it "
        "at PostgreSQL directly: LISTEN needs a session connection.",
    )
    feed_bookmark_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a WatchTasks stream may be quiet before it gets a BOOKMARK "
        "(keep it below proxies' idle timeouts, e.g. nginx grpc_read_timeout 60 s).",
    )
    feed_retention_days: float = Field(
        default=7.0,
        gt=0,
        description="Days of change history `taskservice purge` keeps; older WatchTasks "
        "cursors are OUT_OF_RANGE (CURSOR_EXPIRED).",
    )
    feed_watcher_buffer: int = Field(
        default=1000,
        ge=1,
        description="Events a WatchTasks stream may fall behind before it is ended with "
        "RESOURCE_EXHAUSTED (it resumes from its last cursor).",
    )
    feed_batch_size: int = Field(
        default=500,
        ge=1,
        le=5000,
        description="Events per change-feed read and tasks per initial-snapshot batch.",
    )
    feed_min_read_interval: float = Field(
        default=0.01,
        ge=0,
        description="Seconds between two reads of new change-feed events at least: under "
        "load one read (and one message per watcher) carries the commits of this long; "
        "a quiet feed is read at once.",
    )
    feed_recheck_interval: float = Field(
        default=30.0,
        gt=0,
        description="PostgreSQL: seconds between the change feed's safety re-reads "
        "(wake-ups come from LISTEN/NOTIFY; this covers a lost listening connection).",
    )
    feed_poll_interval: float = Field(
        default=0.25,
        gt=0,
        description="SQLite: seconds between change-feed polls for writes by other "
        "processes (this process's own commits wake watchers at once).",
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("listen_database_url")
    @classmethod
    def _normalise_listen_url(cls, value: str | None) -> str | None:
        return None if value is None else normalise_database_url(value)

    @property
    def is_sqlite(self) -> bool:
        """True when the embedded SQLite backend is configured."""
        return self.database_url.startswith("sqlite")
