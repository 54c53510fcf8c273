"""Postgres: a backup (pg_dump in one exported snapshot) taken while a real gateway (+ Redis db 15) serves traffic
restores into an empty database, verifies and continues; a flipped byte and a non-empty database are refused."""

from __future__ import annotations

import secrets

import pytest

from tests.conftest import PG_ADMIN_URL
from tests.support import backups
from tests.support.backups import (
    REDIS_DB15,
    UNLIMITED,
    backup_under_traffic,
    flip,
    last_json,
    new_data_dir,
    verify_ok,
)
from tests.support.server import base_env, cli

upstream_models = backups.upstream_models  # fixtures
backup_key = backups.backup_key


@pytest.mark.postgres
def test_postgres_round_trip_under_traffic(tmp_path, upstream_models, backup_key, pg_url):
    import psycopg

    data = tmp_path / "pg-a"
    env = base_env(data, **UNLIMITED, PALISADE_MODELS_FILE=str(upstream_models), PALISADE_BACKUP_KEY=backup_key,
                   PALISADE_DATABASE_URL=pg_url, PALISADE_REDIS_URL=REDIS_DB15)
    archive = tmp_path / "pg.palisade-backup"
    made, key = backup_under_traffic(env, tmp_path / "pg-a.log", archive)
    assert made["database"] == "postgresql"

    target = f"palisade_restore_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
    target_url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{target}"
    try:
        data_b = new_data_dir(tmp_path, "pg-b", data)
        env_b = base_env(data_b, PALISADE_BACKUP_KEY=backup_key, PALISADE_DATABASE_URL=target_url,
                         PALISADE_REDIS_URL=REDIS_DB15)
        proc = cli(env_b, "restore", str(flip(archive, tmp_path / "pg-bad")), check=False)
        assert proc.returncode == 1
        with psycopg.connect(target_url) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
        cli(env_b, "migrate")  # a migrated database with no rows yet counts as empty
        done = last_json(cli(env_b, "restore", str(archive)))
        assert done["audit_last_seq"] == made["audit_last_seq"]
        out = verify_ok(env_b)
        assert f"(1..{made['audit_last_seq'] + 1})" in out
        with psycopg.connect(target_url) as conn:
            assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 1
            tag = conn.execute("SELECT tag FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()[0]
        assert tag == "ops:backup:restore"

        # the source database holds rows: refused and unchanged, then replaced with --force
        with psycopg.connect(pg_url) as conn:
            count = conn.execute("SELECT count(*) FROM audit_records").fetchone()[0]
        proc = cli(env, "restore", str(archive), check=False)
        assert proc.returncode == 1 and "not empty" in proc.stderr
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM audit_records").fetchone()[0] == count
        cli(env, "restore", str(archive), "--force")
        verify_ok(env)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
