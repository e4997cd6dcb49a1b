"""Real nginx running the shipped deploy/nginx/taskservice.conf, confined to a temp dir."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.infra.processes import free_ports, stop_process

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SITE = ROOT / "deploy" / "nginx" / "taskservice.conf"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
UPSTREAM_BLOCK = re.compile(r"^upstream taskservice \{\n(?P<body>.*?)^\}", re.M | re.S)
UPSTREAM_SERVER = re.compile(r"^(?P<indent>[ \t]+)server \S+(?P<params>[^;\n]*);\n", re.M)
LISTEN = re.compile(r"^(?P<indent>[ \t]+)listen \S+(?P<params>[^;\n]*);$", re.M)

# One JSON object per request: what the tests read back (attempts, statuses, connections);
# `tag` is the call's x-test-tag metadata, so a test finds its own calls.
ACCESS_LOG_FORMAT = (
    "log_format test escape=json '{"
    '"status":"$status","uri":"$request_uri","upstream":"$upstream_addr",'
    '"upstream_status":"$upstream_status",'
    '"grpc_status":"$upstream_trailer_grpc_status","own_grpc_status":"$sent_http_grpc_status",'
    '"connection":"$connection","connection_requests":"$connection_requests",'
    '"tag":"$http_x_test_tag"'
    "}';"
)


def nginx_binary() -> str:
    """nginx from PATH or /usr/sbin (Debian's nginx-light, installed by `make system-deps`)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise AssertionError("nginx is not installed: run `make system-deps` (nginx-light)")
    return found


def render_site(template: str, *, listen: str, upstreams: Sequence[str]) -> str:
    """The shipped site config with our listen address and upstream servers, nothing else."""
    block = UPSTREAM_BLOCK.search(template)
    assert block is not None, "no `upstream taskservice { ... }` block in the site config"
    servers = list(UPSTREAM_SERVER.finditer(block.group("body")))
    assert servers, "the upstream block lists no server"
    first = servers[0]
    ours = "".join(
        f"{first.group('indent')}server {address}{first.group('params')};\n"
        for address in upstreams
    )
    body = block.group("body")
    body = body[: first.start()] + ours + UPSTREAM_SERVER.sub("", body[first.start() :])
    rendered = template[: block.start("body")] + body + template[block.end("body") :]
    rendered, listens = LISTEN.subn(rf"\g<indent>listen {listen}\g<params>;", rendered)
    assert listens == 1, f"expected one listen directive, found {listens}"
    return rendered


def main_config(directory: Path, site: Path) -> str:
    """A main nginx.conf of our own: one worker, everything written inside `directory`."""
    # As root, nginx's workers would run as `nobody`, which cannot write to our temp dir.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {directory / 'temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{
    worker_connections 4096;
}}
http {{
{temp}
    {ACCESS_LOG_FORMAT}
    access_log {directory / "access.log"} test;
    include {site};
}}
"""


@dataclass
class Nginx:
    """nginx in the foreground, balancing `upstreams` on 127.0.0.1:`port`.

    The site is the shipped file with only its `listen` and upstream `server` lines changed
    (render_site), inside a main config of our own whose pid, logs and temp files all live
    in `directory`, never the machine's /var paths:
    `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log -g 'daemon off;'`.
    """

    directory: Path
    port: int
    upstreams: Sequence[str]
    template: Path = SHIPPED_SITE
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def site_path(self) -> Path:
        return self.directory / "taskservice.conf"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def write_config(self) -> Path:
        """Render the site and the main config into `directory`; return the main config."""
        (self.directory / "temp").mkdir(parents=True, exist_ok=True)
        site = render_site(self.template.read_text(), listen=self.address, upstreams=self.upstreams)
        self.site_path.write_text(site)
        main = self.directory / "nginx.conf"
        main.write_text(main_config(self.directory, self.site_path))
        return main

    def command(self, *extra: str) -> list[str]:
        main = self.directory / "nginx.conf"
        prefix = f"{self.directory}/"
        return [nginx_binary(), "-p", prefix, "-c", str(main), "-e", str(self.error_log), *extra]

    async def start(self) -> None:
        """Check the config (`nginx -t`), run nginx, and wait until it accepts connections."""
        self.write_config()
        check = await asyncio.create_subprocess_exec(
            *self.command("-t"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await check.communicate()
        assert check.returncode == 0, f"nginx -t rejected the config:\n{output.decode()}"
        with (self.directory / "nginx.out").open("ab") as sink:
            self.process = await asyncio.create_subprocess_exec(
                *self.command("-g", "daemon off;"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not await self._accepts():
            if self.process.returncode is not None:
                raise AssertionError(f"nginx exited {self.process.returncode}:\n{self.errors()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx does not listen on {self.address}:\n{self.errors()}")
            await asyncio.sleep(0.05)

    async def _accepts(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async def stop(self) -> None:
        """Fast shutdown (SIGTERM) of master and worker; SIGKILL if it hangs."""
        if self.process is None or self.process.returncode is not None:
            return
        await stop_process(self.process, STOP_TIMEOUT)

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def requests(self) -> list[dict[str, Any]]:
        """The access log so far: one dict per request nginx finished."""
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    async def logged(self, tag: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The `count` calls sent with x-test-tag `tag`, once logged (nginx logs after replying)."""
        deadline = time.monotonic() + timeout
        while len(tagged := [entry for entry in self.requests() if entry["tag"] == tag]) < count:
            assert time.monotonic() < deadline, f"nginx logged {len(tagged)} of {count} calls"
            await asyncio.sleep(0.02)
        assert len(tagged) == count, f"{len(tagged)} calls tagged {tag}, not {count}"
        return tagged


@asynccontextmanager
async def running_nginx(directory: Path, upstreams: Sequence[str]) -> AsyncIterator[Nginx]:
    """nginx with the shipped config in front of `upstreams` (host:port), stopped on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    nginx = Nginx(directory, free_ports(1)[0], upstreams)
    try:
        await nginx.start()
        yield nginx
    finally:
        await nginx.stop()
