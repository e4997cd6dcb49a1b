"""What the infrastructure fixtures share: fixed ports, the postgres user, waiting."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Servers that cannot bind port 0 and report it (PgBouncer, PostgreSQL) get a free port
# from this range (TEST_PORT_RANGE="low-high"), below the kernel's ephemeral ports.
DEFAULT_PORT_RANGE = (25000, 25999)
SERVICE_USER = "postgres"  # PostgreSQL and PgBouncer refuse to run as root


def port_range() -> tuple[int, int]:
    """The inclusive port range fixed-port servers may use."""
    text = os.environ.get("TEST_PORT_RANGE")
    if not text:
        return DEFAULT_PORT_RANGE
    low, _, high = text.partition("-")
    return int(low), int(high)


def free_port(avoid: Sequence[int] = ()) -> int:
    """A loopback port of port_range() that nothing listens on right now."""
    low, high = port_range()
    candidates = list(range(low, high + 1))
    random.shuffle(candidates)
    for port in candidates:
        if port in avoid:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def as_service_user(command: Sequence[str]) -> list[str]:
    """`command` run as the postgres user when we are root.

    Through setpriv, which execs the command (its pid is the server's), and not
    Popen(user=...): that forks without vfork in a process where gRPC runs threads, and
    gRPC's fork handlers then crash the child before it execs.
    """
    if os.geteuid() != 0:
        return list(command)
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, "--reuid", SERVICE_USER, "--regid", SERVICE_USER, "--init-groups", *command]


def own_directory(path: Path) -> Path:
    """Hand `path` (and what is in it) to the user the servers run as."""
    if os.geteuid() == 0:
        record = pwd.getpwnam(SERVICE_USER)
        for item in [path, *path.rglob("*")]:
            os.chown(item, record.pw_uid, record.pw_gid)
    return path


def run_as_service_user(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool (initdb, pg_ctl, ...) as the postgres user; raise on failure."""
    return subprocess.run(  # noqa: S603 - PostgreSQL's own tools
        as_service_user(command), check=True, capture_output=True, text=True, **kwargs
    )


def wait_for_port(port: int, process: subprocess.Popen[Any] | None, timeout: float) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def remove_tree(path: Path) -> None:
    """Remove a server's directory, whatever it left behind."""
    shutil.rmtree(path, ignore_errors=True)
