"""Run alembic migrations programmatically (``palisade migrate``, embedded start, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["url"] = database_url
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings.database_url), revision)
