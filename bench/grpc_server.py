"""What the bench's own gRPC servers share: the health check, signals, the event loop choice.

Each such server is a `python -m bench....` process the bench starts with
`--address`; it serves until SIGTERM or SIGINT. `--loop uvloop` runs it on
uvloop instead of asyncio's default loop (when uvloop is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

LOOPS = ("asyncio", "uvloop")
Register = Callable[[grpc.aio.Server], None]


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--address and --loop."""
    parser.add_argument("--address", required=True, help="host:port to listen on")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop")


def run(main: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    """Run `main()` on the chosen event loop."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


async def serve_until_signal(address: str, register: Register) -> None:
    """Start a grpc.aio server with `register`ed servicers and health; stop on a signal."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)
