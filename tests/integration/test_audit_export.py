"""Compliance export on real Postgres through the real CLI: JSONL and CSV round trips verify offline with only the
public key; a modified export, a modified manifest or another key fails; the export is itself an audit event."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.server import base_env, cli, create_key

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def env(pg_url: str, tmp_path_factory: pytest.TempPathFactory):
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    name = f"palisade_export_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    data = tmp_path_factory.mktemp("export")
    env = base_env(data, PALISADE_DATABASE_URL=f"{pg_url.rsplit('/', 1)[0]}/{name}")
    cli(env, "migrate")
    for i in range(3):
        create_key(env, f"app-{i}")
    cli(env, "keys", "revoke", "app-0", check=False)
    (data / "pub.pem").write_text(cli(env, "audit", "public-key").stdout)
    yield env, data
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_round_trip_and_modified_export_fails(env, fmt: str) -> None:
    env, data = env
    out = data / f"all.{fmt}"
    cli(env, "audit", "export", "--out", str(out), "--format", fmt)
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert manifest["count"] >= 3 and manifest["range"]["first_seq"] == 1 and manifest["checkpoints"]
    ok = cli(env, "audit", "verify-export", str(out), "--public-key", str(data / "pub.pem"), check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    text = out.read_text()
    tampered = data / f"tampered.{fmt}"
    tampered.write_text(text.replace("app-1", "app-X", 1))
    Path(str(tampered) + ".manifest.json").write_text(Path(str(out) + ".manifest.json").read_text())
    bad = cli(
        env, "audit", "verify-export", str(tampered), "--public-key", str(data / "pub.pem"), check=False
    )
    assert bad.returncode == 1 and "sha256" in bad.stdout and "changed" in bad.stdout, bad.stdout

    # re-computing the file hash into the manifest breaks the manifest's signature
    import hashlib

    m = dict(manifest, sha256=hashlib.sha256(tampered.read_bytes()).hexdigest())
    Path(str(tampered) + ".manifest.json").write_text(json.dumps(m))
    bad = cli(
        env, "audit", "verify-export", str(tampered), "--public-key", str(data / "pub.pem"), check=False
    )
    assert bad.returncode == 1 and "bad-signature" in bad.stdout and "changed" in bad.stdout, bad.stdout


def test_filters_another_key_and_the_export_is_audited(env) -> None:
    env, data = env
    out = data / "keys.jsonl"
    cli(env, "audit", "export", "--out", str(out), "--action", "admin:key:*", "--actor", "cli")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines and {r["tag"] for r in lines} <= {"admin:key:create", "admin:key:revoke"}
    assert cli(env, "audit", "verify-export", str(out), "--public-key", str(data / "pub.pem")).returncode == 0
    # a public key that is not the audit key: the manifest's signature is "unknown-key"
    other = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (data / "other.pem").write_bytes(other)
    bad = cli(env, "audit", "verify-export", str(out), "--public-key", str(data / "other.pem"), check=False)
    assert bad.returncode == 1 and "unknown-key" in bad.stdout
    # every export is itself recorded, with the file's hash, and the whole trail still verifies
    after = data / "after.jsonl"
    cli(env, "audit", "export", "--out", str(after), "--action", "audit:log:export")
    exports = [json.loads(x) for x in after.read_text().splitlines()]
    assert len(exports) >= 2 and all(len(e["details"]["sha256"]) == 64 for e in exports)
    assert cli(env, "audit", "verify").returncode == 0
