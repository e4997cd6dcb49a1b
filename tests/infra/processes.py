"""What the infrastructure fixtures share: free ports, the postgres user, waiting."""

from __future__ import annotations

import asyncio
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Servers that must keep one port across restarts (a balancer's upstreams) or cannot bind
# port 0 and report it (PgBouncer, PostgreSQL) take a free port of this range: outside
# Linux's ephemeral range (32768-60999), so no outgoing connection takes it between the
# check and its use. TEST_PORT_RANGE ("low-high") narrows it when several suites share a
# machine.
DEFAULT_PORT_RANGE = (20000, 29999)
SERVICE_USER = "postgres"  # PostgreSQL and PgBouncer refuse to run as root


def port_range() -> tuple[int, int]:
    """The inclusive port range fixed-port servers may use."""
    text = os.environ.get("TEST_PORT_RANGE")
    if not text:
        return DEFAULT_PORT_RANGE
    low, _, high = text.partition("-")
    return int(low), int(high)


def is_free(port: int) -> bool:
    """True if nothing listens on (or holds) 127.0.0.1:`port` right now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, avoid: Sequence[int] = ()) -> list[int]:
    """`count` distinct ports of port_range() that nothing listens on now, in random order."""
    low, high = port_range()
    candidates = [port for port in range(low, high + 1) if port not in avoid]
    random.shuffle(candidates)
    found = [port for port in candidates[: count * 50] if is_free(port)][:count]
    if len(found) < count:
        raise RuntimeError(f"fewer than {count} free ports in {low}-{high}")
    return found


def free_port(avoid: Sequence[int] = ()) -> int:
    """A loopback port of port_range() that nothing listens on right now."""
    return free_ports(1, avoid)[0]


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


async def stop_process(process: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
