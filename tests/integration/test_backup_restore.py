"""Backups taken while a real gateway serves traffic restore into an empty database; the audit trail verifies
and goes on; a damaged archive or a non-empty database is refused and nothing changes.

Runs real `palisade serve` processes over a fake OpenAI upstream, the real CLI, SQLite and Postgres (+ Redis db 15).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_ADMIN_URL
from tests.support.fake_upstreams import fake_upstream
from tests.support.server import GatewayProcess, base_env, cli, create_key

REDIS_DB15 = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="module")
def upstream_models(tmp_path_factory):
    with fake_upstream("ok", "openai") as url:
        path = tmp_path_factory.mktemp("models") / "models.yaml"
        path.write_text(f"models:\n  - alias: mock\n    backend: openai\n    url: \"{url}\"\n"
                        f"    upstream_model: fake-model\n")
        yield path


@pytest.fixture(scope="module")
def backup_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


class Traffic:
    """Requests in a loop from a thread until stopped; every answer must be a 200."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key, self.ok, self.failed = url, key, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30) as c:
            while not self._stop.is_set():
                r = c.post("/v1/chat/completions",
                           json={"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failed.append((r.status_code, r.text[:200]))

    def __enter__(self) -> Traffic:
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.ok < 5 and time.monotonic() < deadline:  # the backup starts with requests in flight
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _last_json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _verify_ok(env) -> str:
    proc = cli(env, "audit", "verify", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _new_data_dir(tmp_path: Path, name: str, source_data: Path) -> Path:
    """A new machine's data dir: only the escrowed master key is there."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy2(source_data / "master.key", d / "master.key")
    return d


def _flip(src: Path, dest: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x40
    dest.write_bytes(bytes(data))
    return dest


def test_sqlite_round_trip_under_traffic(tmp_path, upstream_models, backup_key):
    data = tmp_path / "a"
    env = base_env(data, PALISADE_MODELS_FILE=str(upstream_models), PALISADE_BACKUP_KEY=backup_key)
    cli(env, "migrate")
    key = create_key(env, "app", "mock")
    gw = GatewayProcess(env, tmp_path / "a.log").start()
    archive = tmp_path / "one.palisade-backup"
    try:
        with Traffic(gw.url, key) as traffic:
            made = _last_json(cli(env, "backup", "--out", str(archive)))
            before = traffic.ok
            while traffic.ok < before + 5:  # traffic went on across the backup
                time.sleep(0.05)
        assert not traffic.failed, traffic.failed[:3]
    finally:
        gw.stop()
    assert made["database"] == "sqlite" and made["audit_last_seq"] > 5
    assert b"SQLite format" not in archive.read_bytes() and b"audit_records" not in archive.read_bytes()
    _verify_ok(env)  # the source's own trail, with the backup event in it

    # a new machine: empty data dir with the escrowed master key
    data_b = _new_data_dir(tmp_path, "b", data)
    env_b = base_env(data_b, PALISADE_MODELS_FILE=str(upstream_models), PALISADE_BACKUP_KEY=backup_key)

    # a flipped byte is refused before anything is written
    bad = _flip(archive, tmp_path / "bad.palisade-backup")
    proc = cli(env_b, "restore", str(bad), check=False)
    assert proc.returncode == 1 and "restore refused" in proc.stderr
    assert not (data_b / "palisade.db").exists() and not (data_b / "audit-head.jsonl").exists()

    # so is the wrong backup key
    wrong = {**env_b, "PALISADE_BACKUP_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    assert cli(wrong, "restore", str(archive), check=False).returncode == 1
    assert not (data_b / "palisade.db").exists()

    done = _last_json(cli(env_b, "restore", str(archive)))
    assert done["audit_last_seq"] == made["audit_last_seq"]
    out = _verify_ok(env_b)
    assert f"({1}..{made['audit_last_seq'] + 1})" in out  # the restore event continues the chain

    # the restored installation serves with the key made before the backup, and keeps auditing
    gw_b = GatewayProcess(env_b, tmp_path / "b.log").start()
    try:
        r = httpx.post(gw_b.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
    finally:
        gw_b.stop()
    _verify_ok(env_b)

    # a non-empty database is refused (and unchanged) unless --force
    db_b = data_b / "palisade.db"
    digest = hashlib.sha256(db_b.read_bytes()).hexdigest()
    proc = cli(env_b, "restore", str(archive), check=False)
    assert proc.returncode == 1 and "not empty" in proc.stderr
    assert hashlib.sha256(db_b.read_bytes()).hexdigest() == digest
    proc = cli(env_b, "restore", str(bad), "--force", check=False)  # forced, but damaged: still refused
    assert proc.returncode == 1 and hashlib.sha256(db_b.read_bytes()).hexdigest() == digest
    forced = _last_json(cli(env_b, "restore", str(archive), "--force"))
    assert forced["replaced_head_file"]  # the newer head is kept aside as evidence
    _verify_ok(env_b)


def test_restore_needs_the_escrowed_master_key(tmp_path, upstream_models, backup_key):
    data = tmp_path / "a"
    env = base_env(data, PALISADE_MODELS_FILE=str(upstream_models), PALISADE_BACKUP_KEY=backup_key)
    create_key(env, "app", "mock")
    archive = tmp_path / "k.palisade-backup"
    cli(env, "backup", "--out", str(archive))
    bare = base_env(tmp_path / "bare", PALISADE_BACKUP_KEY=backup_key)
    proc = cli(bare, "restore", str(archive), check=False)
    assert proc.returncode == 1 and "master.key" in proc.stderr
    assert not (tmp_path / "bare" / "master.key").exists()  # refusing created no new KEK
    other = _new_data_dir(tmp_path, "other", data)
    (other / "master.key").write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    proc = cli(base_env(other, PALISADE_BACKUP_KEY=backup_key), "restore", str(archive), check=False)
    assert proc.returncode == 1 and "does not open" in proc.stderr
    assert not (other / "palisade.db").exists()


@pytest.mark.postgres
def test_postgres_round_trip_under_traffic(tmp_path, upstream_models, backup_key, pg_url):
    import psycopg

    data = tmp_path / "pg-a"
    env = base_env(data, PALISADE_MODELS_FILE=str(upstream_models), PALISADE_BACKUP_KEY=backup_key,
                   PALISADE_DATABASE_URL=pg_url, PALISADE_REDIS_URL=REDIS_DB15)
    cli(env, "migrate")
    key = create_key(env, "app", "mock")
    gw = GatewayProcess(env, tmp_path / "pg-a.log").start()
    archive = tmp_path / "pg.palisade-backup"
    try:
        with Traffic(gw.url, key) as traffic:
            made = _last_json(cli(env, "backup", "--out", str(archive)))
            before = traffic.ok
            while traffic.ok < before + 5:
                time.sleep(0.05)
        assert not traffic.failed, traffic.failed[:3]
    finally:
        gw.stop()
    assert made["database"] == "postgresql"

    target = f"palisade_restore_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
    target_url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{target}"
    try:
        data_b = _new_data_dir(tmp_path, "pg-b", data)
        env_b = base_env(data_b, PALISADE_BACKUP_KEY=backup_key, PALISADE_DATABASE_URL=target_url,
                         PALISADE_REDIS_URL=REDIS_DB15)
        proc = cli(env_b, "restore", str(_flip(archive, tmp_path / "pg-bad")), check=False)
        assert proc.returncode == 1
        with psycopg.connect(target_url) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
        cli(env_b, "migrate")  # a migrated database with no rows yet counts as empty
        done = _last_json(cli(env_b, "restore", str(archive)))
        assert done["audit_last_seq"] == made["audit_last_seq"]
        out = _verify_ok(env_b)
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
        _verify_ok(env)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_scheduled_backups_keep_the_newest(tmp_path, backup_key, monkeypatch):
    """The Celery task's body: a new archive in the backup dir, older ones pruned to PALISADE_BACKUP_KEEP."""
    from gateway.jobs import beat_schedule
    from gateway.ops.service import scheduled_backup
    from gateway.settings import Settings

    env = base_env(tmp_path / "s", PALISADE_BACKUP_KEY=backup_key, PALISADE_BACKUP_KEEP="2",
                   PALISADE_BACKUP_INTERVAL_S="3600")
    cli(env, "migrate")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings.from_env()
    assert beat_schedule(settings)["palisade-ops-backup"]["task"] == "palisade.ops.backup"
    made = [scheduled_backup(settings).path.name for _ in range(3)]
    kept = sorted(p.name for p in (tmp_path / "s" / "backups").iterdir())
    assert kept == made[1:]
    out = _verify_ok(env)
    assert "0 problems" in out


def test_beat_runs_scheduled_backups_in_a_real_worker(tmp_path, backup_key):
    """`palisade worker --beat` with PALISADE_BACKUP_INTERVAL_S: archives appear, pruned to PALISADE_BACKUP_KEEP."""
    import subprocess
    import sys

    from tests.support.server import ROOT

    env = base_env(tmp_path / "w", PALISADE_BACKUP_KEY=backup_key, PALISADE_BACKUP_KEEP="2",
                   PALISADE_BACKUP_INTERVAL_S="2")
    cli(env, "migrate")
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu", "--beat"], env=env,
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    folder = tmp_path / "w" / "backups"
    try:
        deadline = time.monotonic() + 120
        while _backup_events(tmp_path / "w") < 3 and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
    assert _backup_events(tmp_path / "w") >= 3, (tmp_path / "worker.log").read_text()[-3000:]
    assert len(list(folder.glob("*.palisade-backup"))) == 2
    _verify_ok(env)


def _backup_events(data: Path) -> int:
    import sqlite3

    with sqlite3.connect(data / "palisade.db") as db:
        return db.execute("SELECT count(*) FROM audit_records WHERE tag = 'ops:backup:create'").fetchone()[0]


def test_artifacts_travel_with_their_manifest(tmp_path, backup_key):
    data = tmp_path / "a"
    env = base_env(data, PALISADE_BACKUP_KEY=backup_key)
    cli(env, "migrate")
    files = {"artifacts/models/v1/model.safetensors": secrets.token_bytes(70_000),
             "datasets/ds-1/shard-000.jsonl": b'{"text": "hello"}\n'}
    for rel, body in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(body)
    archive = tmp_path / "art.palisade-backup"
    assert _last_json(cli(env, "backup", "--out", str(archive), "--with-artifacts"))["members"] == 7
    data_b = _new_data_dir(tmp_path, "b", data)
    done = _last_json(cli(base_env(data_b, PALISADE_BACKUP_KEY=backup_key), "restore", str(archive)))
    assert done["artifacts_restored"] == 2
    for rel, body in files.items():
        assert (data_b / rel).read_bytes() == body
