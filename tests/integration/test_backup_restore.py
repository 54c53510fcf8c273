"""Backups taken while a real gateway serves traffic restore into an empty database; the audit trail verifies
and goes on; a damaged archive, a wrong key, a missing master key or a non-empty database is refused and nothing
changes. SQLite here; Postgres in test_backup_postgres.py, schedules in test_backup_schedule.py.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

import httpx

from tests.support import backups
from tests.support.backups import UNLIMITED, backup_under_traffic, flip, last_json, new_data_dir, verify_ok
from tests.support.server import GatewayProcess, base_env, cli, create_key

upstream_models = backups.upstream_models  # fixtures
backup_key = backups.backup_key


def test_sqlite_round_trip_under_traffic(tmp_path, upstream_models, backup_key):
    data = tmp_path / "a"
    env = base_env(data, **UNLIMITED, PALISADE_MODELS_FILE=str(upstream_models), PALISADE_BACKUP_KEY=backup_key)
    archive = tmp_path / "one.palisade-backup"
    made, key = backup_under_traffic(env, tmp_path / "a.log", archive)
    assert made["database"] == "sqlite" and made["audit_last_seq"] > 5
    assert b"SQLite format" not in archive.read_bytes() and b"audit_records" not in archive.read_bytes()
    verify_ok(env)  # the source's own trail, with the backup event in it

    # a new machine: empty data dir with the escrowed master key
    data_b = new_data_dir(tmp_path, "b", data)
    env_b = base_env(data_b, PALISADE_MODELS_FILE=str(upstream_models), PALISADE_BACKUP_KEY=backup_key)

    # a flipped byte is refused before anything is written
    bad = flip(archive, tmp_path / "bad.palisade-backup")
    proc = cli(env_b, "restore", str(bad), check=False)
    assert proc.returncode == 1 and "restore refused" in proc.stderr
    assert not (data_b / "palisade.db").exists() and not (data_b / "audit-head.jsonl").exists()

    # so is the wrong backup key
    wrong = {**env_b, "PALISADE_BACKUP_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    assert cli(wrong, "restore", str(archive), check=False).returncode == 1
    assert not (data_b / "palisade.db").exists()

    done = last_json(cli(env_b, "restore", str(archive)))
    assert done["audit_last_seq"] == made["audit_last_seq"]
    out = verify_ok(env_b)
    assert f"({1}..{made['audit_last_seq'] + 1})" in out  # the restore event continues the chain

    # the restored installation serves with the key made before the backup, and keeps auditing
    gw_b = GatewayProcess(env_b, tmp_path / "b.log").start()
    try:
        r = httpx.post(gw_b.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
    finally:
        gw_b.stop()
    verify_ok(env_b)

    # a non-empty database is refused (and unchanged) unless --force
    db_b = data_b / "palisade.db"
    digest = hashlib.sha256(db_b.read_bytes()).hexdigest()
    proc = cli(env_b, "restore", str(archive), check=False)
    assert proc.returncode == 1 and "not empty" in proc.stderr
    assert hashlib.sha256(db_b.read_bytes()).hexdigest() == digest
    proc = cli(env_b, "restore", str(bad), "--force", check=False)  # forced, but damaged: still refused
    assert proc.returncode == 1 and hashlib.sha256(db_b.read_bytes()).hexdigest() == digest
    forced = last_json(cli(env_b, "restore", str(archive), "--force"))
    assert forced["replaced_head_file"]  # the newer head is kept aside as evidence
    verify_ok(env_b)


def test_restore_needs_the_escrowed_master_key(tmp_path, upstream_models, backup_key):
    data = tmp_path / "a"
    env = base_env(data, **UNLIMITED, PALISADE_MODELS_FILE=str(upstream_models), PALISADE_BACKUP_KEY=backup_key)
    create_key(env, "app", "mock")
    archive = tmp_path / "k.palisade-backup"
    cli(env, "backup", "--out", str(archive))
    bare = base_env(tmp_path / "bare", PALISADE_BACKUP_KEY=backup_key)
    proc = cli(bare, "restore", str(archive), check=False)
    assert proc.returncode == 1 and "master.key" in proc.stderr
    assert not (tmp_path / "bare" / "master.key").exists()  # refusing created no new KEK
    other = new_data_dir(tmp_path, "other", data)
    (other / "master.key").write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    proc = cli(base_env(other, PALISADE_BACKUP_KEY=backup_key), "restore", str(archive), check=False)
    assert proc.returncode == 1 and "does not open" in proc.stderr
    assert not (other / "palisade.db").exists()


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
    assert last_json(cli(env, "backup", "--out", str(archive), "--with-artifacts"))["members"] == 7
    data_b = new_data_dir(tmp_path, "b", data)
    done = last_json(cli(base_env(data_b, PALISADE_BACKUP_KEY=backup_key), "restore", str(archive)))
    assert done["artifacts_restored"] == 2
    for rel, body in files.items():
        assert (data_b / rel).read_bytes() == body
