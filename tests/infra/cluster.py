"""Replicas on one PostgreSQL database behind real nginx: the deployment the README describes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.infra.databases import throwaway_postgres
from tests.infra.nginx import Nginx, running_nginx
from tests.infra.service_process import ServiceProcess, service_processes

# Every replica must share it, or page and resume tokens fail on the others.
PAGE_TOKEN_SECRET = "balanced-replicas-share-this-page-token-secret"


@dataclass
class Cluster:
    """Server processes on one database and the nginx in front of them."""

    database_url: str
    replicas: list[ServiceProcess]
    nginx: Nginx


@asynccontextmanager
async def balanced_cluster(directory: Path, *, replicas: int = 3) -> AsyncIterator[Cluster]:
    """A fresh database, `replicas` serving processes on it, nginx with the shipped config.

    Replicas can be killed, terminated and started again (same port) while nginx runs;
    everything is stopped and the database dropped on exit.
    """
    async with (
        throwaway_postgres("cluster") as database_url,
        service_processes(
            replicas,
            *("--database-url", database_url, "--page-token-secret", PAGE_TOKEN_SECRET),
            directory=directory / "replicas",
        ) as processes,
        running_nginx(directory / "nginx", [process.address for process in processes]) as nginx,
    ):
        yield Cluster(database_url, processes, nginx)
