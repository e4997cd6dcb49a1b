"""Run Alembic migrations programmatically (the only way the schema is made)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from service.settings import Settings

SOURCE_TREE = Path(__file__).resolve().parents[2]
INSTALLED = Path(__file__).resolve().parents[1] / "alembic"  # where the wheel puts them


def _alembic_home() -> Path:
    return SOURCE_TREE if (SOURCE_TREE / "alembic.ini").is_file() else INSTALLED


def alembic_config(database_url: str, *, pooled: bool = False) -> Config:
    """Alembic config for this project pointed at `database_url` (`pooled`: through a
    transaction-pooling PgBouncer)."""
    home = _alembic_home()
    config = Config(str(home / "alembic.ini"))
    config.set_main_option("script_location", str(home / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["database_pooler"] = "transaction" if pooled else "none"
    return config


def upgrade(database_url: str, revision: str = "head", *, pooled: bool = False) -> None:
    """Apply migrations up to `revision` (blocking; run it outside the event loop)."""
    command.upgrade(alembic_config(database_url, pooled=pooled), revision)


def upgrade_configured(settings: Settings) -> None:
    """Apply every migration over the session connection (session_database_url, whose
    default is database_url): migrations hold locks and run DDL, best without a pooler."""
    upgrade(settings.session_url, pooled=settings.session_url_is_pooled)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Revert migrations down to `revision`."""
    command.downgrade(alembic_config(database_url), revision)
