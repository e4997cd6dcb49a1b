"""A real PgBouncer for tests, configured from the shipped deploy/pgbouncer/pgbouncer.ini.

    bouncer = start_pgbouncer(server_port=5432, pool_size=4)
    url = bouncer.url("my_database")            # postgresql+asyncpg://postgres@127.0.0.1:P/...
    bouncer.admin("SHOW POOLS")                 # the admin console, through psql
    bouncer.stop()

The shipped file is the template: only addresses, ports, paths, authentication (trust,
as the test PostgreSQL's) and the pool sizes a test asks for are changed, so the
settings an operator copies (pool_mode, timeouts) are the ones the tests run with.
"""

from __future__ import annotations

import configparser
import shutil
import signal
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
    wait_for_port,
)

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "pgbouncer" / "pgbouncer.ini"
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
PSQL = shutil.which("psql") or "/usr/bin/psql"
START_TIMEOUT = 10.0


@dataclass
class PgBouncer:
    """A running PgBouncer process and its directory (config, auth file, log)."""

    port: int
    directory: Path
    config: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, database: str, user: str = SERVICE_USER) -> str:
        """SQLAlchemy URL of `database` through this PgBouncer."""
        return f"postgresql+asyncpg://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self, attempts: int = 3) -> None:
        """Start (or start again, on the same port) and wait until it accepts connections;
        a restart may find the port still held for a moment, hence a few attempts."""
        for attempt in range(attempts):
            try:
                self._start_once()
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2)

    def _start_once(self) -> None:
        log = (self.directory / "pgbouncer.stdout").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
            as_service_user([PGBOUNCER, str(self.config)]),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_for_port(self.port, self.process, START_TIMEOUT)
        except (RuntimeError, TimeoutError) as error:
            self.stop()
            raise RuntimeError(f"pgbouncer did not start:\n{self.log()}") from error

    def stop(self) -> None:
        """Shut down (SIGINT: at once, closing every connection) and wait for the exit."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Die at once, as a crashed pooler would (SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def admin(self, command: str) -> str:
        """Run an admin console command (SHOW POOLS, PAUSE, ...); its output as text."""
        done = subprocess.run(  # noqa: S603 - fixed binary, loopback only
            [PSQL, "-h", "127.0.0.1", "-p", str(self.port), "-U", SERVICE_USER, "-X", "-A"]
            + ["-t", "-F", "|", "-c", command, "pgbouncer"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout

    def log(self) -> str:
        """What PgBouncer logged so far."""
        parts = [
            path.read_text(errors="replace")
            for path in (self.directory / "pgbouncer.log", self.directory / "pgbouncer.stdout")
            if path.exists()
        ]
        return "\n".join(parts)

    def remove(self) -> None:
        """Stop and delete the directory."""
        self.stop()
        remove_tree(self.directory)


def write_config(
    directory: Path,
    *,
    port: int,
    server_host: str,
    server_port: int,
    pool_size: int,
    max_client_conn: int,
    query_wait_timeout: float,
) -> Path:
    """The shipped pgbouncer.ini with this test's addresses, paths and sizes."""
    config = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    config.optionxform = str  # type: ignore[assignment,method-assign] # database names keep case
    config.read(TEMPLATE)
    # Any database name maps to the same name on the test server.
    config.remove_section("databases")
    config["databases"] = {"*": f"host={server_host} port={server_port}"}
    settings = config["pgbouncer"]
    settings.update(
        listen_addr="127.0.0.1",
        listen_port=str(port),
        auth_type="trust",  # the test PostgreSQL trusts loopback connections too
        auth_file=str(directory / "userlist.txt"),
        logfile=str(directory / "pgbouncer.log"),
        pidfile=str(directory / "pgbouncer.pid"),
        default_pool_size=str(pool_size),
        max_client_conn=str(max_client_conn),
        query_wait_timeout=str(int(query_wait_timeout)),
    )
    (directory / "userlist.txt").write_text(f'"{SERVICE_USER}" ""\n')
    path = directory / "pgbouncer.ini"
    with path.open("w") as file:
        config.write(file)
    return path


def start_pgbouncer(
    *,
    server_host: str = "127.0.0.1",
    server_port: int = 5432,
    pool_size: int = 4,
    max_client_conn: int = 500,
    query_wait_timeout: float = 30,
) -> PgBouncer:
    """Start a transaction-pooling PgBouncer in front of `server_host:server_port`."""
    last_error: Exception | None = None
    for _ in range(5):  # the port may be taken between choosing and binding it
        directory = Path(tempfile.mkdtemp(prefix="taskservice-pgbouncer-"))
        port = free_port()
        config = write_config(
            directory,
            port=port,
            server_host=server_host,
            server_port=server_port,
            pool_size=pool_size,
            max_client_conn=max_client_conn,
            query_wait_timeout=query_wait_timeout,
        )
        bouncer = PgBouncer(port, own_directory(directory), config)
        try:
            bouncer.start(attempts=1)
        except RuntimeError as error:
            last_error = error
            bouncer.remove()
            time.sleep(0.05)
            continue
        return bouncer
    raise RuntimeError(f"could not start pgbouncer: {last_error}")
