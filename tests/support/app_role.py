"""A Postgres database migrated for an application role, as deployed: the gateway connects as a role that may
only SELECT/INSERT the audit table (migration 0002's grants and trigger), the test keeps the owner's URL to
refuse writes (``REVOKE INSERT``), lock tables or read everything."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.db.migrate import upgrade
from gateway.settings import Settings


@contextlib.contextmanager
def app_role_database(pg_url: str) -> Iterator[tuple[str, str, str]]:
    """(owner URL, app role URL, role name) of a new database, dropped with its role afterwards."""
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    role, name = f"palisade_app_{secrets.token_hex(3)}", f"palisade_fc_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE ROLE "{role}" LOGIN')
        c.execute(f'CREATE DATABASE "{name}"')
    owner_url = f"{pg_url.rsplit('/', 1)[0]}/{name}"
    try:
        with psycopg.connect(owner_url, autocommit=True) as c:
            # the documented deployment order: default grants for the app role, then migrate naming the role
            c.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
            c.execute(
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES "
                f'TO "{role}"'
            )
            c.execute(f'ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "{role}"')
        mp = pytest.MonkeyPatch()
        mp.setenv("PALISADE_DB_APP_ROLE", role)
        try:
            upgrade(Settings(data_dir=Path("/tmp"),
                             database_url=owner_url.replace("postgresql://", "postgresql+psycopg://")))
        finally:
            mp.undo()
        yield owner_url, owner_url.replace("postgres@", f"{role}@"), role
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.execute(f'DROP ROLE IF EXISTS "{role}"')
