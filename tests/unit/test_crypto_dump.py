"""A pg_dump of a real Postgres database holds no plaintext secret: API keys (hashed), the audit signing key and
a TOTP seed (encrypted by the keyring), the keyring's data keys (wrapped), a token in an audit event (HMAC)."""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.audit.chain import AuditChain
from gateway.audit.events import AuditEvent, Tag
from gateway.authn.apikeys import ApiKeyService
from gateway.crypto import open_keyring
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings

pytestmark = pytest.mark.postgres


def _forms(secret: bytes) -> list[str]:
    return [secret.hex(), base64.b64encode(secret).decode(), base64.b32encode(secret).decode().rstrip("=")]


async def test_database_dump_contains_no_plaintext_secret(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    name = f"palisade_dump_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = f"{pg_url.rsplit('/', 1)[0]}/{name}"
    settings = Settings(data_dir=tmp_path, database_url=url.replace("postgresql://", "postgresql+psycopg://"))
    upgrade(settings)
    db = Database(settings)
    try:
        keyring = await open_keyring(settings, db)
        new_key = await ApiKeyService(db).create("dump-test")
        seed = secrets.token_bytes(20)  # a TOTP seed (160 bit), stored the way identity stores it
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE TABLE totp_like (id text primary key, seed_enc bytea)")
            c.execute(
                "INSERT INTO totp_like VALUES ('u1', %s)",
                (keyring.encrypt(seed, table="totp_like", row="u1", field="seed_enc", purpose="totp"),),
            )
        chain = await AuditChain.open(settings, db, keyring)
        await chain.record(
            AuditEvent(Tag.AUTHN_FAILURE, details={"presented": new_key.key, "api_key": "s3cr3t-v"})
        )
        signing_raw = chain.signer.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        await chain.close()
        dump = subprocess.run(
            ["pg_dump", "--no-owner", url], capture_output=True, text=True, check=True
        ).stdout
    finally:
        await db.close()
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert "dump-test" in dump and "totp_like" in dump and "audit_records" in dump  # the dump is real
    assert new_key.key not in dump and new_key.key.split("_")[-1] not in dump and "s3cr3t-v" not in dump
    secrets_in_memory = [seed, signing_raw, *(k for v in keyring._keys.values() for k in v.values())]
    master = (tmp_path / "master.key").read_text().split()
    for secret in secrets_in_memory:
        for form in _forms(secret):
            assert form not in dump and form.lower() not in dump
    for line in master:
        assert line not in dump and base64.b64decode(line).hex() not in dump
