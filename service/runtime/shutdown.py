"""Draining shutdown: NOT_SERVING, a drain delay, refuse new calls, wait for calls in flight.

The order load balancers understand (Kubernetes, Envoy, nginx with health checks):
1. health turns NOT_SERVING at once, while the server keeps serving normally for
   `drain_delay`, so balancers stop sending before anything is refused;
2. the admission gate refuses every new call with UNAVAILABLE (SERVER_SHUTTING_DOWN,
   retryable: no handler ran) and streams end after their current batch with a resume
   token;
3. every call already received (queued in the gate too) runs to its end, its status
   sent, within `shutdown_grace`;
4. after a short linger (the last responses leave), the process closes.

grpc's own `server.stop()` is not how a drained process closes: grpc-core cancels the
calls it holds when its shutdown begins (accepted but not yet handed to Python, or
arriving before the client saw the GOAWAY), and clients see CANCELLED, which no retry
policy retries. A drained process has nothing left to wait for, so it exits instead: a
call still in transit then fails with UNAVAILABLE (connection reset or refused), which
clients retry, and which never ran.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any, NoReturn

from service.runtime.admission import AdmissionGate

log = logging.getLogger(__name__)

# After the last call admitted has had its status sent, linger this long (with the
# process running promptly all along: a loop that wakes late means a starved process,
# and the wait starts over) so the last responses leave before the sockets close.
# Refusals do not extend it: a balancer without health checks keeps sending until the
# process is gone, and its calls are better moved on by a closed port than refused.
LINGER_S = 0.1
_TICK_S = 0.01
_LATE_WAKE_S = 0.02


async def drain(
    gate: AdmissionGate,
    health: Any,  # grpc_health.v1.health.aio.HealthServicer
    shutting_down: asyncio.Event,
    *,
    grace: float,
    drain_delay: float,
) -> bool:
    """Steps 1-3 above, and the linger; False when calls were still in flight after
    `grace`."""
    await health.enter_graceful_shutdown()
    if drain_delay > 0:
        log.info("draining: NOT_SERVING, serving on for %.1f s", drain_delay)
        await asyncio.sleep(drain_delay)
    gate.stop_accepting()
    shutting_down.set()
    log.info("refusing new calls; %d in flight get %.1f s", gate.in_flight, grace)
    try:
        async with asyncio.timeout(grace):
            await gate.wait_idle()
            await _linger()
    except TimeoutError:
        log.warning("%d calls still in flight after %.1f s: cancelling them", gate.in_flight, grace)
        return False
    return True


async def _linger() -> None:
    """Return after LINGER_S of prompt running."""
    since = time.monotonic()
    while True:
        before = time.monotonic()
        await asyncio.sleep(_TICK_S)
        now = time.monotonic()
        if now - before > _TICK_S + _LATE_WAKE_S:
            since = now
        elif now - since >= LINGER_S:
            return


def exit_drained() -> NoReturn:
    """End a drained process at once, without grpc's shutdown (see the module doc)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
