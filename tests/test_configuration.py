"""Settings for scaling out: typos stop the start, multi-host URLs, pooler and replicas."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from service.__main__ import _parser, load_settings
from service.settings import Settings, normalise_database_url
from service.storage.engines import driver_options
from tests.infra.service_process import run_service


async def _start(*flags: str, **settings: str) -> tuple[int, str]:
    """Exit code and stderr of `python -m service serve` that must not start serving."""
    settings = {"database_url": "sqlite+aiosqlite:///:memory:", **settings}
    code, _, stderr = await run_service("serve", "--address", "127.0.0.1:0", *flags, **settings)
    return code, stderr


async def test_an_unknown_taskservice_variable_stops_the_start_naming_it() -> None:
    code, stderr = await _start(database_poolr="transaction")
    assert code == 2
    assert "TASKSERVICE_DATABASE_POOLR" in stderr
    assert "did you mean TASKSERVICE_DATABASE_POOLER?" in stderr


async def test_an_unknown_flag_stops_the_start() -> None:
    code, stderr = await _start("--database-poolr", "transaction")
    assert code == 2
    assert "unrecognized arguments: --database-poolr" in stderr


def test_an_abbreviated_flag_is_not_taken_for_a_setting() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--shutdown", "3"])  # not --shutdown-grace


def test_unknown_variables_fail_every_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSERVICE_POOL_SIZ", "3")
    with pytest.raises(ValidationError, match="TASKSERVICE_POOL_SIZ"):
        Settings()
    with pytest.raises(ValidationError):
        load_settings(_parser().parse_args([]))


def test_known_variables_in_any_case_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("taskservice_database_pooler", "transaction")
    monkeypatch.setenv("TASKSERVICE_DATABASE_URL", "postgresql://u@db/tasks")
    assert Settings().database_pooler == "transaction"


@pytest.mark.parametrize(
    ("given", "hosts", "database", "query"),
    [
        # libpq's form, as operators copy it from PostgreSQL's documentation
        (
            "postgresql://u:p@h1:5432,h2:5433/tasks?target_session_attrs=read-write",
            ("h1:5432", "h2:5433"),
            "tasks",
            {"target_session_attrs": "read-write"},
        ),
        ("postgres://h1,h2:6000/tasks", ("h1:5432", "h2:6000"), "tasks", {}),
        # SQLAlchemy's own form is kept as it is
        (
            "postgresql+asyncpg://u@/tasks?host=h1:5432&host=h2:5433&target_session_attrs=any",
            ("h1:5432", "h2:5433"),
            "tasks",
            {"target_session_attrs": "any"},
        ),
    ],
)
def test_multi_host_urls_of_both_forms_reach_asyncpg_as_host_lists(
    given: str, hosts: tuple[str, ...], database: str, query: dict[str, str]
) -> None:
    url = make_url(Settings(database_url=given).database_url)
    assert url.drivername == "postgresql+asyncpg"
    assert url.database == database
    assert url.query["host"] == hosts
    assert {key: value for key, value in url.query.items() if key != "host"} == query
    # What the dialect hands asyncpg: one list of hosts, one of ports.
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

    _, options = PGDialect_asyncpg().create_connect_args(url)
    assert options["host"] == [host.rpartition(":")[0] for host in hosts]
    assert options["port"] == [int(host.rpartition(":")[2]) for host in hosts]


def test_single_host_urls_are_unchanged_but_for_the_driver() -> None:
    assert normalise_database_url("postgresql://u@db:5432/tasks?ssl=require") == (
        "postgresql+asyncpg://u@db:5432/tasks?ssl=require"
    )


def test_pooler_and_replicas_need_postgresql() -> None:
    with pytest.raises(ValidationError, match="need PostgreSQL"):
        Settings(database_url="sqlite:///x.db", database_pooler="transaction")
    with pytest.raises(ValidationError, match="need PostgreSQL"):
        Settings(database_url="sqlite:///x.db", read_database_urls=["postgresql://r/tasks"])
    with pytest.raises(ValidationError, match="hot standbys"):
        Settings(database_url="postgresql://p/tasks", read_database_urls=["sqlite:///x.db"])


def test_read_database_urls_come_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKSERVICE_DATABASE_URL", "postgresql://p/tasks")
    monkeypatch.setenv("TASKSERVICE_READ_DATABASE_URLS", '["postgres://r1/tasks","r2/x"]')
    with pytest.raises(ValidationError):
        Settings()  # "r2/x" is no PostgreSQL URL
    monkeypatch.setenv("TASKSERVICE_READ_DATABASE_URLS", '["postgres://r1/tasks"]')
    assert Settings().read_database_urls == ["postgresql+asyncpg://r1/tasks"]


def test_only_pooled_urls_turn_named_statements_off() -> None:
    pooled = Settings(database_url="postgresql://pgbouncer/tasks", database_pooler="transaction")
    assert driver_options(pooled, pooled.database_url) == {"statement_cache_size": 0}
    assert pooled.session_url == pooled.database_url
    assert pooled.session_url_is_pooled
    with_session = Settings(
        database_url="postgresql://pgbouncer/tasks",
        database_pooler="transaction",
        session_database_url="postgresql://primary/tasks",
    )
    assert driver_options(with_session, with_session.session_url) == {}
    assert not with_session.session_url_is_pooled
    direct = Settings(database_url="postgresql://primary/tasks")
    assert driver_options(direct, direct.database_url) == {}
