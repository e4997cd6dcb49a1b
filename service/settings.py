"""Process settings, read from TASKSERVICE_* environment variables and CLI flags."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/taskservice.db"
ENV_PREFIX = "TASKSERVICE_"
# scheme://[userinfo@]hosts[/database][?query]: libpq's URI form, whose host part may
# list several host[:port] entries separated by commas.
_LIBPQ_URI = re.compile(
    r"(?P<scheme>[^:/]+)://(?:(?P<userinfo>[^@/?]*)@)?(?P<hosts>[^/?]*)(?P<rest>.*)"
)
_DEFAULT_PORT = "5432"


def normalise_database_url(url: str) -> str:
    """Map `postgres://` and `postgresql://` URLs to the asyncpg driver, and libpq's
    multi-host form (`h1:5432,h2:5433`) to SQLAlchemy's (`?host=h1:5432&host=h2:5433`)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    if url.startswith("postgresql"):
        return _multi_host_as_query(url)
    return url


def _multi_host_as_query(url: str) -> str:
    """libpq's `postgresql://u@h1:5432,h2:5433/db?x=y` as SQLAlchemy's
    `postgresql://u@/db?host=h1:5432&host=h2:5433&x=y` (asyncpg needs every port)."""
    match = _LIBPQ_URI.fullmatch(url)
    if match is None or "," not in match["hosts"]:
        return url
    hosts = [_with_port(host) for host in match["hosts"].split(",")]
    path, _, query = match["rest"].partition("?")
    params = "&".join([*(f"host={host}" for host in hosts), *([query] if query else [])])
    userinfo = f"{match['userinfo']}@" if match["userinfo"] is not None else ""
    return f"{match['scheme']}://{userinfo}{path or '/'}?{params}"


def _with_port(host: str) -> str:
    bracketed = host.startswith("[")  # an IPv6 address: [::1]:5432
    has_port = host.rpartition("]")[2].startswith(":") if bracketed else ":" in host
    return host if has_port else f"{host}:{_DEFAULT_PORT}"


def unknown_environment_variables(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """TASKSERVICE_* variables that name no setting (typos must not run with defaults)."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(
        key for key in environ if key.upper().startswith(ENV_PREFIX) and key.upper() not in known
    )


class Settings(BaseSettings):
    """Everything the server can be configured with."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; postgres:// and postgresql:// mean asyncpg. Several "
        "hosts (failover): libpq's postgresql://h1:5432,h2:5432/db?target_session_attrs="
        "read-write or SQLAlchemy's ?host=h1:5432&host=h2:5432.",
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
    pool_recycle: float = Field(
        default=0.0,
        ge=0,
        description="Replace a pooled connection at checkout once it is this many seconds old "
        "(0: never); set it below the age at which a balancer or failover cuts connections.",
    )
    sql_log: bool = Field(
        default=False,
        description="Log every SQL statement with its duration and parameters (logger "
        "service.storage.sql, at INFO); for development, it costs CPU on every query.",
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
    tracing: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="OpenTelemetry traces, exported over OTLP/gRPC: auto = on when "
        "tracing_endpoint or a standard OTEL_* variable (OTEL_EXPORTER_OTLP_ENDPOINT, "
        "OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...) is set, unless OTEL_SDK_DISABLED=true "
        "or OTEL_TRACES_EXPORTER=none; the OTEL_* variables configure the exporter.",
    )
    tracing_endpoint: str | None = Field(
        default=None,
        description="OTLP/gRPC collector for traces, e.g. http://collector:4317; turns "
        "tracing on (auto). Unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317.",
    )
    tracing_sample_ratio: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of new traces recorded; a caller's traceparent decides for its "
        "own calls (parent-based). Unset: OTEL_TRACES_SAMPLER(_ARG), else 1.",
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
    # --- scaling out --------------------------------------------------------------
    database_pooler: Literal["none", "transaction"] = Field(
        default="none",
        description="transaction: database_url (and read_database_urls) lead to a "
        "transaction-pooling PgBouncer; no server-side prepared statements, no session state.",
    )
    session_database_url: str | None = Field(
        default=None,
        description="Direct (session) connection for what needs one: migrations, the change "
        "feed's LISTEN (one per process). Unset: database_url; behind a transaction-mode "
        "pooler point it at PostgreSQL itself.",
    )
    read_database_urls: list[str] = Field(
        default_factory=list,
        description="Hot standbys for Get*, List*, Stream* and ListTaskEvents, as a JSON list "
        "of URLs (each its own pool); writes return x-consistency-token.",
    )
    max_replica_lag: float = Field(
        default=1.0,
        gt=0,
        description="Seconds a standby may be behind the primary and still serve reads "
        "that send no consistency token.",
    )
    replica_wait: float = Field(
        default=0.1,
        ge=0,
        description="Seconds a read with a consistency token waits for a standby to replay "
        "it (never past the call's deadline) before the primary serves it.",
    )
    replica_check_interval: float = Field(
        default=0.2,
        gt=0,
        description="Seconds between checks of each standby's health and replay position.",
    )

    # --- change feed (WatchTasks) ----------------------------------------------------
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

    @field_validator("database_url", "session_database_url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        return None if value is None else normalise_database_url(value)

    @field_validator("read_database_urls")
    @classmethod
    def _normalise_urls(cls, values: list[str]) -> list[str]:
        urls = [normalise_database_url(value) for value in values]
        if any(not url.startswith("postgresql") for url in urls):
            raise ValueError("read replicas must be PostgreSQL hot standbys")
        return urls

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        unknown = unknown_environment_variables(os.environ)
        if unknown:
            raise ValueError("unknown settings in the environment: " + _suggest(unknown))
        if self.is_sqlite and (self.read_database_urls or self.database_pooler != "none"):
            raise ValueError("read_database_urls and database_pooler need PostgreSQL")
        return self

    @property
    def admission_limit(self) -> int:
        """RPCs executing at once: max_concurrent_rpcs, else what the pool can serve."""
        return self.max_concurrent_rpcs or self.pool_size + self.max_overflow

    @property
    def is_sqlite(self) -> bool:
        """True when the embedded SQLite backend is configured."""
        return self.database_url.startswith("sqlite")

    @property
    def session_url(self) -> str:
        """The URL of features that need a session connection (migrations, LISTEN)."""
        return self.session_database_url or self.database_url

    @property
    def session_url_is_pooled(self) -> bool:
        """Whether session_url leads to the transaction pooler (no session state there)."""
        return self.database_pooler == "transaction" and self.session_database_url is None


def _suggest(names: list[str]) -> str:
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    described = []
    for name in names:
        close = difflib.get_close_matches(name.upper(), known, n=1)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(described) + "; see `taskservice --help`"
