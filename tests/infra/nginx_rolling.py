"""A real nginx (grpc_pass) in front of TaskService replicas, for the rolling-restart test."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 30.0

# max_fails=0: a replica that refused one connection while restarting is not taken out
# for fail_timeout (three quick restarts would leave "no live upstreams"); nginx still
# moves a request whose connect failed to the next replica (grpc_next_upstream error).
# nginx's own 502 is an HTML page: answer it as gRPC UNAVAILABLE (status 14), which
# retry policies retry. keepalive_requests: the default 1000 ends client connections
# with GOAWAY. A forwarded call is never re-sent by nginx (POST is not idempotent).
CONFIG = """
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream taskservice {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        keepalive_requests 1000000;
        http2_max_concurrent_streams 1000;
        grpc_read_timeout 300s;
        grpc_send_timeout 300s;
        location / {{
            grpc_pass grpc://taskservice;
            error_page 502 504 = @unavailable;
        }}
        location @unavailable {{
            default_type application/grpc;
            add_header grpc-status 14 always;
            add_header grpc-message "upstream unavailable" always;
            return 200 "";
        }}
    }}
}}
"""


@dataclass
class NginxProxy:
    """A running nginx and where clients reach it."""

    port: int
    work: Path

    @property
    def address(self) -> str:
        """host:port gRPC clients connect to."""
        return f"127.0.0.1:{self.port}"

    def error_log(self) -> str:
        """nginx's error log so far."""
        path = self.work / "error.log"
        return path.read_text() if path.exists() else ""


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@asynccontextmanager
async def nginx_grpc_proxy(
    work: Path, port: int, upstreams: Sequence[int]
) -> AsyncIterator[NginxProxy]:
    """nginx on `port` balancing gRPC calls over the replicas on `upstreams` (per call)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in upstreams)
    work.mkdir(parents=True, exist_ok=True)
    config = work / "nginx.conf"
    config.write_text(CONFIG.format(work=work, servers=servers, port=port))
    process = await asyncio.create_subprocess_exec(
        nginx,
        "-p",
        str(work),
        "-c",
        str(config),
        "-g",
        "daemon off;",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(port):
            assert process.returncode is None, "nginx exited:\n" + (work / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start listening"
            await asyncio.sleep(0.05)
        yield NginxProxy(port, work)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                await asyncio.wait_for(process.wait(), START_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
