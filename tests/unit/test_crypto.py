"""Keyring: AES-256-GCM with AAD binding, per-purpose versioned data keys, KEK rotation (real SQLite database)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from gateway.crypto import Keyring, KeyringError, LocalKek, open_keyring
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings


def _settings(tmp: Path) -> Settings:
    return Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'p.db'}")


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    settings = _settings(tmp_path)
    upgrade(settings)
    db = Database(settings)
    yield settings, db
    await db.close()


async def test_two_encryptions_differ_and_both_open(env) -> None:
    settings, db = env
    kr = await open_keyring(settings, db)
    where = {"table": "users", "row": "u1", "field": "totp_seed", "purpose": "totp"}
    a, b = kr.encrypt(b"JBSWY3DPEHPK3PXP", **where), kr.encrypt(b"JBSWY3DPEHPK3PXP", **where)
    assert a != b and a[5:17] != b[5:17]  # fresh nonce each time
    assert b"JBSWY3DPEHPK3PXP" not in a
    assert kr.decrypt(a, **where) == kr.decrypt(b, **where) == b"JBSWY3DPEHPK3PXP"


async def test_ciphertext_is_bound_to_table_row_field_and_purpose(env) -> None:
    settings, db = env
    kr = await open_keyring(settings, db)
    a = kr.encrypt(b"seed-of-alice", table="users", row="alice", field="totp_seed", purpose="totp")
    b = kr.encrypt(b"seed-of-bob", table="users", row="bob", field="totp_seed", purpose="totp")
    # swapping the two rows' ciphertexts: neither opens in the other's row
    with pytest.raises(KeyringError):
        kr.decrypt(a, table="users", row="bob", field="totp_seed", purpose="totp")
    with pytest.raises(KeyringError):
        kr.decrypt(b, table="users", row="alice", field="totp_seed", purpose="totp")
    for other in (
        {"table": "clients", "row": "alice", "field": "totp_seed", "purpose": "totp"},
        {"table": "users", "row": "alice", "field": "recovery", "purpose": "totp"},
    ):
        with pytest.raises(KeyringError):
            kr.decrypt(a, **other)
    with pytest.raises(KeyringError):  # another purpose has another key
        kr.decrypt(a, table="users", row="alice", field="totp_seed", purpose="prompts")
    flipped = bytearray(a)
    flipped[-1] ^= 1
    with pytest.raises(KeyringError):
        kr.decrypt(bytes(flipped), table="users", row="alice", field="totp_seed", purpose="totp")
    # the key version is part of the AAD: relabelling a blob as another version fails
    relabelled = bytes([a[0]]) + (2).to_bytes(4, "big") + a[5:]
    with pytest.raises(KeyringError):
        kr.decrypt(relabelled, table="users", row="alice", field="totp_seed", purpose="totp")


async def test_rotation_keeps_old_data_readable_and_new_data_uses_new_version(env) -> None:
    settings, db = env
    kr = await open_keyring(settings, db)
    where = {"table": "datasets", "row": "d1", "field": "blob", "purpose": "datasets"}
    old = kr.encrypt(b"old secret", **where)
    old_hmac = kr.hmac("audit-hmac", "pal_abc")
    kek_before = kr.kek.current_id
    report = await kr.rotate()
    assert report.kek_id != kek_before and report.new_versions["datasets"] == 2 and report.rewrapped >= 6
    new = kr.encrypt(b"new secret", **where)
    assert Keyring.blob_version(old) == 1 and Keyring.blob_version(new) == 2
    assert kr.decrypt(old, **where) == b"old secret" and kr.decrypt(new, **where) == b"new secret"
    assert old_hmac in kr.hmac_candidates("audit-hmac", "pal_abc")
    # a fresh process (new keyring from the same file and database) reads both
    kr2 = await open_keyring(settings, db)
    assert kr2.decrypt(old, **where) == b"old secret" and kr2.decrypt(new, **where) == b"new secret"
    # a process that started before the rotation picks up the new version on first sight
    stale = Keyring(db, LocalKek.from_env_or_file(settings.data_dir))
    stale._keys = {"datasets": {1: kr._keys["datasets"][1]}}
    assert await stale.adecrypt(new, **where) == b"new secret"


async def test_master_key_file_is_private_and_env_key_wins(env, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, db = env
    kr = await open_keyring(settings, db)
    mode = stat.S_IMODE(os.stat(settings.data_dir / "master.key").st_mode)
    assert mode == 0o600
    blob = kr.encrypt(b"x", table="t", row="1", field="f", purpose="secrets")
    # a different KEK from the environment cannot unwrap the stored data keys
    monkeypatch.setenv("PALISADE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(KeyringError, match="unknown key-encryption key"):
        await open_keyring(settings, db)
    # with the file's key named in the environment (after a new one), everything opens
    file_key = (settings.data_dir / "master.key").read_text().strip()
    monkeypatch.setenv("PALISADE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode() + "," + file_key)
    kr3 = await open_keyring(settings, db)
    assert kr3.decrypt(blob, table="t", row="1", field="f", purpose="secrets") == b"x"
    assert await kr3.rewrap() >= 6  # re-wrapped under the new env key
    monkeypatch.setenv("PALISADE_MASTER_KEY", os.environ["PALISADE_MASTER_KEY"].split(",")[0])
    kr4 = await open_keyring(settings, db)
    assert kr4.decrypt(blob, table="t", row="1", field="f", purpose="secrets") == b"x"
    monkeypatch.setenv("PALISADE_MASTER_KEY", "bm90LTMyLWJ5dGVz")
    with pytest.raises(KeyringError, match="32 bytes"):
        await open_keyring(settings, db)


def _kek_id_after(barrier, data_dir: str) -> str:  # noqa: ANN001 (a multiprocessing barrier)
    from gateway.crypto.kek import LocalKek

    barrier.wait()
    return LocalKek.from_env_or_file(Path(data_dir)).current_id


def test_processes_starting_at_once_on_a_fresh_data_dir_agree_on_one_master_key(tmp_path: Path, monkeypatch) -> None:
    """Replicas (or the CLI beside serve) started together: one creates master.key, whole; the others read it
    (none finds it empty or half written, none makes a second key)."""
    import multiprocessing

    from gateway.crypto.kek import MASTER_KEY_ENV

    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager, ctx.Pool(6) as pool:
        for attempt in range(10):
            data_dir = tmp_path / f"d{attempt}"
            barrier = manager.Barrier(6)
            ids = pool.starmap(_kek_id_after, [(barrier, str(data_dir))] * 6)
            assert len(set(ids)) == 1, ids
            assert [p.name for p in data_dir.iterdir()] == ["master.key"]  # no temporary file left behind
            assert stat.S_IMODE(os.stat(data_dir / "master.key").st_mode) == 0o600
