"""Migrations: an empty Postgres database upgrades to head, and autogenerate finds nothing missing."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import gateway.db  # noqa: F401
from gateway.db.base import Base
from gateway.db.migrate import upgrade
from gateway.settings import Settings, normalise_db_url
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def empty_pg(tmp_path):
    name = f"palisade_mig_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield normalise_db_url(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _diff(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    return diff


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_upgrade_to_head_and_no_missing_migration(backend, empty_pg, tmp_path):
    url = empty_pg if backend == "postgres" else f"sqlite:///{tmp_path / 'm.db'}"
    settings = Settings(data_dir=tmp_path, database_url=url)
    upgrade(settings)
    assert _diff(url) == []
    upgrade(settings)  # idempotent at head
