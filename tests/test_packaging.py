"""Packaging: the wheel, its `taskservice` script, settings from the environment, and the
README's configuration table (generated from Settings, so it must not drift)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service.__main__ import _parser
from service.runtime.settings_table import BEGIN, END, env_name, render_table, replace_table
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


# --- README configuration table --------------------------------------------------------


def test_readme_settings_table_is_generated_and_current() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(BEGIN) == 1
    assert readme.count(END) == 1
    assert readme == replace_table(readme), (
        "README.md's configuration table differs from service/settings.py: run `make docs`"
    )


def test_settings_table_has_one_row_per_setting() -> None:
    rows = [line for line in render_table().splitlines() if line.startswith("| `")]
    assert len(rows) == len(Settings.model_fields)
    for row, (name, field) in zip(rows, Settings.model_fields.items(), strict=True):
        assert f"`{env_name(name)}`" in row
        assert f"`--{name.replace('_', '-')}`" in row
        assert (field.description or "").replace("|", "\\|") in row
    assert "taskservice-development-page-token-key" not in render_table()


def test_help_documents_every_setting() -> None:
    text = " ".join(_parser().format_help().split())  # unwrap argparse's line breaks
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert f"env {env_name(name)}" in text


# --- the wheel ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel .` of this checkout (hatchling, no dependencies)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("taskservice-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed (without dependencies) into a directory of its own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--no-compile"]
        + ["--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def run_installed(
    site: Path, *args: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the installed `taskservice` script; the wheel's packages shadow the checkout."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASKSERVICE_")}
    environment.update(env, PYTHONPATH=str(site))
    return subprocess.run(
        [str(site / "bin" / "taskservice"), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_wheel_contains_the_service_the_stubs_and_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    for expected in (
        "taskmanager/__init__.py",
        "taskmanager/v1/task_service_pb2.py",
        "taskmanager/v1/task_service_pb2_grpc.py",
        "taskmanager/v1/resources_pb2.pyi",
        "service/__main__.py",
        "service/runtime/server.py",
        "service/settings.py",
        "service/alembic/alembic.ini",
        "service/alembic/migrations/env.py",
    ):
        assert expected in names
    assert any(name.startswith("service/alembic/migrations/versions/") for name in names)
    assert not any(name.startswith(("migrations/", "alembic.ini")) for name in names)
    assert "taskservice = service.__main__:main" in scripts
    assert not any(name.startswith(("tests/", "generated/", "examples/")) for name in names)
    assert not any("__pycache__" in name for name in names)


def test_installed_script_help_lists_subcommands_and_settings(
    installed: Path, tmp_path: Path
) -> None:
    done = run_installed(installed, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "{serve,migrate" in text
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert env_name(name) in text


def test_installed_script_migrates_with_settings_from_flags_or_environment(
    installed: Path, tmp_path: Path
) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import service, taskmanager; print(service.__file__)"],
        env={**os.environ, "PYTHONPATH": str(installed)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(installed))  # the wheel, not the checkout

    by_flag = tmp_path / "flag.db"
    done = run_installed(
        installed, "migrate", "--database-url", f"sqlite:///{by_flag}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    by_env = tmp_path / "env.db"
    done = run_installed(
        installed, "migrate", cwd=tmp_path, TASKSERVICE_DATABASE_URL=f"sqlite:///{by_env}"
    )
    assert done.returncode == 0, done.stderr

    for database in (by_flag, by_env):
        with sqlite3.connect(database) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert {"tasks", "projects", "workers", "alembic_version"} <= tables


def test_installed_script_rejects_an_invalid_setting(installed: Path, tmp_path: Path) -> None:
    done = run_installed(installed, "migrate", cwd=tmp_path, TASKSERVICE_POOL_SIZE="0")
    assert done.returncode == 2
    assert "pool_size" in done.stderr
