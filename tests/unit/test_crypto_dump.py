"""A pg_dump of a real Postgres database, after real use of the gateway, holds no secret in clear.

The app is the real one on Postgres (in process, real HTTP semantics); it is used the way people and apps use it:
a person with TOTP and recovery codes logs in (session cookie + CSRF token), enrols a security key, regenerates
recovery codes, starts a TOTP re-enrolment (a pending seed); an OAuth client gets an access token; an API key
and the token call a model, and a failed login records the presented password. Then every secret the gateway
holds or handed out is looked for in the dump, in the encodings it could be stored in:

- kept by the gateway (must be encrypted by the keyring): the TOTP seed and the pending one, the token-signing
  private keys (decrypted from ``signing_keys`` through the keyring to know what to look for), the audit signing
  key, the keyring's data keys and the master key file that wraps them;
- handed out once (must be stored hashed or not at all): passwords, recovery codes, API keys, the OAuth client
  secret, access tokens, the session cookie and its CSRF token, the security key's private key.

The dump must also really contain rows of each secret-bearing table, or the search would prove nothing.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from gateway.app import services_of
from gateway.authn.sessions import SESSION_COOKIE
from gateway.db.identity import SigningKey
from tests.integration.test_identity_helpers import (
    BASE_URL,
    PASSWORD,
    gateway_client,
    identity_settings,
    login,
    make_person,
    seed_of,
)
from tests.support.fake_upstreams import fake_upstream
from tests.support.soft_authenticator import SoftAuthenticator

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="session")]

#: tables that hold secrets (encrypted or hashed); each must have rows in the dump
SECRET_TABLES = ("signing_keys", "users", "recovery_codes", "webauthn_credentials", "oauth_clients",
                 "user_sessions", "data_keys", "api_keys", "audit_signing_keys", "audit_records")


def forms(secret: str | bytes) -> set[str]:
    """The ways a secret could appear in a text dump: as is, hex (bytea), base64 (std/url, padded or not),
    base32 (TOTP seeds), and a secret string's UTF-8 bytes as hex."""
    raw = secret.encode() if isinstance(secret, str) else secret
    out = {raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
           base64.b32encode(raw).decode()}
    out |= {f.rstrip("=") for f in out}
    if isinstance(secret, str):
        out.add(secret)
        out.add(secret.lower())
    return {f for f in out if len(f) >= 12}  # shorter strings could match by chance


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def rows_of(dump: str, table: str) -> int:
    """Rows in the table's COPY block of a plain-format dump."""
    m = re.search(rf"^COPY public\.{table} \(.*?\) FROM stdin;\n(.*?)^\\\.$", dump, re.M | re.S)
    return len(m.group(1).splitlines()) if m else 0


@pytest.fixture()
async def database(pg_url: str):
    """A database of its own (dropped afterwards): nothing from other tests in the dump."""
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    name = f"palisade_dump_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_dump_after_real_use_holds_no_secret_in_clear(database: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    handed_out: dict[str, str | bytes] = {"password": PASSWORD}
    kept: dict[str, str | bytes] = {}
    with fake_upstream("ok", "openai") as upstream:
        settings = identity_settings(tmp_path, upstream, database_url=database)
        async with gateway_client(settings) as (client, app):
            s = services_of(app)
            person = await make_person(app, "admin")
            kept["totp seed"] = person.seed
            handed_out.update({f"recovery code {i}": c for i, c in enumerate(person.recovery_codes)})
            csrf = await login(client, person)
            handed_out["csrf token"] = csrf
            handed_out["session cookie"] = client.cookies[SESSION_COOKIE]
            h = {"X-CSRF-Token": csrf}
            key = SoftAuthenticator(origin=BASE_URL)
            options = (await client.post("/auth/mfa/webauthn/options", headers=h)).json()
            r = await client.post("/auth/mfa/webauthn", headers=h,
                                  json={"credential": key.create(options), "password": PASSWORD, "name": "k"})
            assert r.status_code == 201, r.text
            handed_out["security key private key"] = (
                key.private_key.private_numbers().private_value.to_bytes(32, "big"))
            r = await client.post("/auth/mfa/recovery-codes", json={"password": PASSWORD}, headers=h)
            assert r.status_code == 200, r.text
            handed_out.update({f"new recovery code {i}": c for i, c in enumerate(r.json()["recovery_codes"])})
            r = await client.post("/auth/mfa/totp", json={"password": PASSWORD}, headers=h)
            assert r.status_code == 200, r.text
            kept["pending totp seed"] = seed_of(r.json()["otpauth_uri"])

            new_client = await s.identity.clients.create("dump-app", models=["mock"])
            handed_out["client secret"] = new_client.client_secret
            r = await client.post("/oauth/token", data={"grant_type": "client_credentials"},
                                  auth=(new_client.client_id, new_client.client_secret))
            token = r.json()["access_token"]
            handed_out["access token"] = token
            handed_out["access token signature"] = token.rsplit(".", 1)[1]
            api_key = (await s.keys.create("dump-key", models=["mock"])).key
            handed_out["api key"] = api_key
            handed_out["api key secret part"] = api_key.rsplit("_", 1)[1]
            body = {"model": "mock", "messages": [{"role": "user", "content": "hello"}]}
            for bearer in (api_key, token):
                r = await client.post("/v1/chat/completions", json=body,
                                      headers={"Authorization": f"Bearer {bearer}"})
                assert r.status_code == 200, r.text
            async with httpx.AsyncClient(transport=client._transport, base_url=BASE_URL) as stranger:
                wrong = "Tr0ub4dor&3-is-not-it-" + secrets.token_hex(4)
                handed_out["mistyped password"] = wrong
                r = await stranger.post("/auth/login", json={"username": person.username, "password": wrong})
                assert r.status_code == 401

            async with s.db.session() as sess:
                for row in (await sess.execute(select(SigningKey))).scalars():
                    jwk = json.loads(s.keyring.decrypt(row.private_key_enc, table="signing_keys", row=row.kid,
                                                       field="private_key", purpose="signing"))
                    kept[f"token signing key {row.kid}"] = b64url_decode(jwk["d"])
            kept["audit signing key"] = s.audit.signer.private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
            for purpose, versions in s.keyring._keys.items():
                for version, dek in versions.items():
                    kept[f"data key {purpose} v{version}"] = dek
    for i, line in enumerate((tmp_path / "master.key").read_text().split()):
        kept[f"master key line {i}"] = base64.b64decode(line)
        kept[f"master key line {i} (text)"] = line

    dump = subprocess.run(["pg_dump", "--no-owner", database], capture_output=True, text=True, check=True).stdout
    empty = [t for t in SECRET_TABLES if rows_of(dump, t) == 0]
    assert not empty, f"tables without rows in the dump (the search would prove nothing): {empty}"
    assert person.username in dump and "dump-app" in dump and "dump-key" in dump  # the dump is real
    found = {name: f for name, secret in {**kept, **handed_out}.items() for f in forms(secret) if f in dump}
    assert not found, f"secrets in clear in the database dump: {sorted(found)}"
