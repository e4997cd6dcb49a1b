"""A real PostgreSQL primary with a streaming hot standby, in a temporary directory.

    pair = start_streaming_pair(synchronous=True)   # initdb, pg_basebackup -R, pg_ctl
    pair.primary.url("tasks"), pair.standby.port, pair.standby.query("SELECT 1")
    pair.standby.stop(); pair.standby.start(); pair.wait_streaming()
    pair.primary.stop("immediate"); pair.standby.promote()
    pair.remove()                                   # stops both, deletes the directory

PostgreSQL's own binaries (initdb, pg_ctl, pg_basebackup) run as the postgres user,
on ports from tests.infra.processes.port_range(); the test PostgreSQL is never touched.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.infra.processes import (
    SERVICE_USER,
    as_service_user,
    free_port,
    own_directory,
    remove_tree,
    run_as_service_user,
)

PSQL = shutil.which("psql") or "/usr/bin/psql"
START_TIMEOUT = 60  # seconds pg_ctl waits for a start or a promotion
# Small and fast: tests crash servers on purpose (immediate stop), never the machine, so
# fsync buys nothing; synchronous_commit stays on, so synchronous replication is real.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "shared_buffers": "'32MB'",
    "max_connections": "100",
    "fsync": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "5",
    "wal_keep_size": "'128MB'",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_receiver_status_interval": "'1s'",
    "log_min_messages": "warning",
}


def bin_directory() -> Path:
    """Where initdb, pg_ctl and pg_basebackup are (PG_BINDIR, else the newest installed)."""
    configured = os.environ.get("PG_BINDIR")
    if configured:
        return Path(configured)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("initdb not found: install PostgreSQL or set PG_BINDIR")
    return found[-1].parent


@dataclass
class PostgresServer:
    """One PostgreSQL server: its data directory and port."""

    name: str
    data: Path
    port: int
    sockets: Path

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database` on this server."""
        return f"postgresql+asyncpg://{SERVICE_USER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str) -> str:
        """asyncpg/libpq DSN of `database` on this server."""
        return f"postgresql://{SERVICE_USER}@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        """Run pg_ctl on this server's data directory."""
        log = self.data.parent / f"{self.name}.log"
        run_as_service_user(
            [str(bin_directory() / "pg_ctl"), "-D", str(self.data), "-l", str(log), *args],
            timeout=timeout,
        )

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        self.pg_ctl("-w", "-t", str(START_TIMEOUT), "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop: `fast` (clean, disconnects everyone) or `immediate` (a crash)."""
        if self.running:
            self.pg_ctl("-w", "-m", mode, "stop")

    def promote(self) -> None:
        """Promote this standby to a primary (what Patroni does) and wait until it is one."""
        self.pg_ctl("-w", "-t", str(START_TIMEOUT), "promote")

    @property
    def running(self) -> bool:
        """Whether the postmaster is up."""
        done = subprocess.run(  # noqa: S603 - PostgreSQL's own tool
            as_service_user([str(bin_directory() / "pg_ctl"), "-D", str(self.data), "status"]),
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def query(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` through psql; its unaligned output, stripped."""
        done = subprocess.run(  # noqa: S603 - fixed binary, loopback only
            [PSQL, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, self.dsn(database)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip()

    def configure(self, settings: dict[str, str]) -> None:
        """Append settings to postgresql.conf (later lines win); applied at the next start."""
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(lines)


@dataclass
class StreamingPair:
    """A primary and a hot standby streaming from it."""

    root: Path
    primary: PostgresServer
    standby: PostgresServer
    _removed: bool = field(default=False, repr=False)

    def wait_streaming(self, timeout: float = 30) -> None:
        """Wait until the standby streams from the primary and has replayed all of it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.primary.query(
                "SELECT count(*) FROM pg_stat_replication "
                "WHERE state = 'streaming' AND replay_lsn >= pg_current_wal_flush_lsn()"
            )
            if state == "1":
                return
            time.sleep(0.05)
        raise TimeoutError("the standby is not streaming:\n" + self.logs())

    def wait_synchronous(self, timeout: float = 30) -> None:
        """Wait until the primary's commits wait for the standby (sync_state = 'sync')."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.primary.query("SELECT sync_state FROM pg_stat_replication") == "sync":
                return
            time.sleep(0.05)
        raise TimeoutError("the standby is not synchronous:\n" + self.logs())

    def logs(self) -> str:
        """Both servers' logs."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')}"
            for path in sorted(self.root.glob("*.log"))
        )

    def remove(self) -> None:
        """Stop both servers (at once) and delete everything."""
        if self._removed:
            return
        self._removed = True
        for server in (self.standby, self.primary):
            try:
                server.stop("immediate")
            except subprocess.SubprocessError:
                pass
        remove_tree(self.root)


_template: Path | None = None


def _initdb(data: Path) -> None:
    """A new cluster in `data`: a copy of this run's first initdb (initdb takes seconds)."""
    global _template  # noqa: PLW0603 - one template per test run
    if _template is None:
        root = own_directory(Path(tempfile.mkdtemp(prefix="taskservice-pg-template-")))
        run_as_service_user(
            [str(bin_directory() / "initdb"), "-D", str(root / "data"), "-U", SERVICE_USER]
            + ["--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"],
            timeout=120,
        )
        atexit.register(remove_tree, root)
        _template = root / "data"
    subprocess.run(["cp", "-a", str(_template), str(data)], check=True)  # noqa: S603, S607


def start_streaming_pair(*, synchronous: bool = False) -> StreamingPair:
    """initdb a primary, pg_basebackup -R a standby from it, start both, wait for streaming.

    `synchronous`: the primary's commits wait for the standby to flush them
    (synchronous_standby_names = '*'), so a promoted standby has every acknowledged write.
    """
    root = own_directory(Path(tempfile.mkdtemp(prefix="taskservice-pg-pair-")))
    first = free_port()
    primary = PostgresServer("primary", root / "primary", first, root)
    standby = PostgresServer("standby", root / "standby", free_port(avoid=(first,)), root)
    pair = StreamingPair(root, primary, standby)
    atexit.register(pair.remove)  # even if the test run is interrupted
    try:
        _initdb(primary.data)
        primary.configure(
            {
                **SERVER_SETTINGS,
                "port": str(primary.port),
                "unix_socket_directories": f"'{root}'",
            }
        )
        primary.start()
        run_as_service_user(
            [str(bin_directory() / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port)]
            + ["-U", SERVICE_USER, "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast"]
            + ["--no-sync"],
            timeout=120,
        )
        # A promoted standby has no standby of its own: it must not wait for one.
        standby.configure({"port": str(standby.port), "synchronous_standby_names": "''"})
        standby.start()
        pair.wait_streaming()
        if synchronous:  # only now: pg_basebackup's own WAL stream is no standby to wait for
            primary.query("ALTER SYSTEM SET synchronous_standby_names = '*'")
            primary.query("SELECT pg_reload_conf()")
            pair.wait_synchronous()
    except BaseException:
        pair.remove()
        raise
    return pair
