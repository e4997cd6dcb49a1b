"""Free loopback ports for processes that must keep one port across restarts."""

from __future__ import annotations

import os
import random
import socket

# Outside Linux's ephemeral range (32768-60999), so no outgoing connection takes a port
# between the check and its use. TEST_PORT_RANGE ("low-high") narrows it when several
# suites share a machine.
DEFAULT_RANGE = "20000-29999"


def port_range() -> range:
    """The ports tests may listen on (TEST_PORT_RANGE, inclusive)."""
    low, high = os.environ.get("TEST_PORT_RANGE", DEFAULT_RANGE).split("-")
    return range(int(low), int(high) + 1)


def is_free(port: int) -> bool:
    """True if nothing listens on (or holds) 127.0.0.1:port right now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct ports of port_range() that are free now, in random order."""
    candidates = list(port_range())
    random.shuffle(candidates)
    found = [port for port in candidates[: count * 50] if is_free(port)][:count]
    if len(found) < count:
        raise RuntimeError(f"fewer than {count} free ports in TEST_PORT_RANGE {port_range()}")
    return found
