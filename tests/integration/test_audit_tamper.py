"""Tamper suite on real Postgres: each kind of tampering is detected and NAMED by `palisade audit verify`.

One trail (60 records from concurrent producers, signed checkpoints every 10, the external head file) is built
once; each test gets a copy (``CREATE DATABASE … TEMPLATE`` plus a copy of the data dir), tampers with it as a
database superuser would (triggers off via ``session_replication_role``), and runs the real CLI.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.canonical import checkpoint_payload
from gateway.audit.chain import AuditChain
from gateway.audit.events import AuditEvent, Tag
from gateway.audit.signing import key_id_of
from gateway.crypto import open_keyring
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings
from tests.support.server import base_env, cli

pytestmark = pytest.mark.postgres
N = 60


def _settings(url: str, data: Path) -> Settings:
    return Settings(
        data_dir=data,
        database_url=url.replace("postgresql://", "postgresql+psycopg://"),
        audit_checkpoint_every=10,
        audit_checkpoint_interval_s=3600,
    )


async def _fill(settings: Settings) -> None:
    db = Database(settings)
    chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
    try:

        async def producer(p: int) -> None:
            for i in range(N // 6):
                await chain.record(
                    AuditEvent(
                        Tag.INFERENCE,
                        actor=f"key:{p}-ü",
                        target="tiny",
                        decision="allow",
                        request_id=f"r{p}-{i}",
                        # text that must survive the batch's JSON parameter byte for byte (the hash is over it)
                        details={"tokens": i, "token": "pal_x", "note": 'é "q" \\ \n\t ☃ 😀 </x>'},
                    )
                )

        await asyncio.gather(*(producer(p) for p in range(6)))
    finally:
        await chain.close()
        await db.close()


@pytest.fixture(scope="module")
def base_trail(pg_url: str, tmp_path_factory: pytest.TempPathFactory):
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    name = f"palisade_audit_base_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = f"{pg_url.rsplit('/', 1)[0]}/{name}"
    data = tmp_path_factory.mktemp("audit-base")
    settings = _settings(url, data)
    upgrade(settings)
    asyncio.run(_fill(settings))
    yield admin, name, data
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def trail(base_trail, tmp_path: Path):
    """A private copy of the trail: (psycopg url, env for the CLI)."""
    admin, base, data = base_trail
    name = f"palisade_audit_t_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{base}"')
    url = f"{admin.rsplit('/', 1)[0]}/{name}"
    shutil.copytree(data, tmp_path / "data")
    env = base_env(tmp_path / "data", PALISADE_DATABASE_URL=url)
    yield url, env
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tamper(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SET session_replication_role = replica")  # a superuser bypassing the append-only trigger
        for sql in statements:
            c.execute(sql)


def _verify(env: dict[str, str]) -> tuple[int, set[str], str]:
    proc = cli(env, "audit", "verify", check=False)
    kinds = {line.split()[1].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("PROBLEM ")}
    return proc.returncode, kinds, proc.stdout


def test_untouched_trail_verifies(trail) -> None:
    url, env = trail
    code, kinds, out = _verify(env)
    assert code == 0 and not kinds, out
    assert f"{N} records (1..{N})" in out
    with psycopg.connect(url) as c:  # tokens are HMACs in the trail, never the value
        details = c.execute("SELECT details FROM audit_records WHERE seq = 1").fetchone()[0]
    assert "pal_x" not in details and '"token":"hmac:v1:' in details


def test_changed_field_is_named(trail) -> None:
    url, env = trail
    _tamper(url, "UPDATE audit_records SET actor = 'key:mallory' WHERE seq = 15")
    code, kinds, out = _verify(env)
    assert code == 1 and kinds == {"changed"}, out
    assert "changed at seq 15" in out


def test_changed_and_rehashed_record_is_named(trail) -> None:
    from gateway.audit.canonical import iso, record_hash

    url, env = trail
    with psycopg.connect(url) as c:
        r = c.execute(
            "SELECT at, tag, actor, target, model, decision, request_id, details, prev_hash "
            "FROM audit_records WHERE seq = 23"
        ).fetchone()
    forged = record_hash(iso(r[0]), r[1], "key:mallory", *r[3:])
    _tamper(url, f"UPDATE audit_records SET actor = 'key:mallory', hash = '{forged}' WHERE seq = 23")
    code, kinds, out = _verify(env)
    assert code == 1 and kinds == {"changed"} and "changed at seq 23" in out, out


def test_deleted_middle_record_is_named(trail) -> None:
    url, env = trail
    _tamper(url, "DELETE FROM audit_records WHERE seq = 15")
    code, kinds, out = _verify(env)
    assert code == 1 and kinds == {"deleted"}, out
    assert "deleted at seq 15" in out


def test_swapped_records_are_named_reordered(trail) -> None:
    url, env = trail
    _tamper(
        url,
        "UPDATE audit_records SET seq = -1 WHERE seq = 15",
        "UPDATE audit_records SET seq = 15 WHERE seq = 16",
        "UPDATE audit_records SET seq = 16 WHERE seq = -1",
    )
    code, kinds, out = _verify(env)
    assert code == 1 and kinds == {"reordered"}, out


def test_deleted_tail_is_named_truncated_even_without_db_checkpoints(trail) -> None:
    url, env = trail
    _tamper(
        url,
        f"DELETE FROM audit_records WHERE seq > {N - 3}",
        f"DELETE FROM audit_checkpoints WHERE seq > {N - 3}",
        f"UPDATE audit_head SET seq = {N - 3}",
    )
    code, kinds, out = _verify(env)
    assert code == 1 and kinds == {"truncated"}, out
    assert "external head" in out


def test_forged_checkpoints_are_named(trail) -> None:
    url, env = trail
    with psycopg.connect(url) as c:
        seq, head, real_kid = c.execute(
            "SELECT seq, head_hash, key_id FROM audit_checkpoints ORDER BY id DESC LIMIT 1"
        ).fetchone()
    other = Ed25519PrivateKey.generate()
    other_kid = key_id_of(other.public_key())
    at = "2030-01-01T00:00:00.000000+00:00"

    def sig(kid: str) -> str:
        return base64.b64encode(other.sign(checkpoint_payload(seq, head, at, "periodic", kid))).decode()

    for kid in (other_kid, real_kid):  # a key nobody knows, and the real key id with another key's signature
        _tamper(
            url,
            "INSERT INTO audit_checkpoints (seq, head_hash, at, kind, key_id, signature) VALUES "
            f"({seq}, '{head}', '{at}', 'periodic', '{kid}', '{sig(kid)}')",
        )
    code, kinds, out = _verify(env)
    assert code == 1 and kinds == {"unknown-key", "bad-signature"}, out


def test_range_verify_and_pruning_keep_the_rest_verifiable(trail) -> None:
    url, env = trail
    proc = cli(env, "audit", "verify", "--from-seq", "20", "--to-seq", "40")
    assert "21 records (20..40)" in proc.stdout
    with psycopg.connect(url) as c:
        cutoff = c.execute("SELECT at FROM audit_records WHERE seq = 30").fetchone()[0]
    cli(env, "audit", "prune", "--before", cutoff.isoformat())
    with psycopg.connect(url) as c:
        first = c.execute("SELECT min(seq) FROM audit_records").fetchone()[0]
        assert first is not None and first > 1
        # still append-only for everyone after pruning: the trigger is back on
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DELETE FROM audit_records WHERE seq = %s", (first,))
    code, kinds, out = _verify(env)
    assert code == 0, out
    # deleting the first surviving record is still caught (the anchor fixes where the trail starts)
    _tamper(url, f"DELETE FROM audit_records WHERE seq = {first}")
    code, kinds, out = _verify(env)
    assert code == 1 and "deleted" in kinds, out


def test_rogue_key_row_in_the_database_is_not_trusted(trail) -> None:
    """Whoever can write the database adds their own signing key and a checkpoint it signed: verify trusts only
    the keys pinned outside the database, so both are named unknown-key."""
    from cryptography.hazmat.primitives import serialization

    url, env = trail
    rogue = Ed25519PrivateKey.generate()
    kid = key_id_of(rogue.public_key())
    pem = rogue.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    with psycopg.connect(url) as c:
        seq, head = c.execute(
            "SELECT seq, head_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1"
        ).fetchone()
    at = "2030-01-01T00:00:00.000000+00:00"
    signature = base64.b64encode(rogue.sign(checkpoint_payload(seq, head, at, "periodic", kid))).decode()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "INSERT INTO audit_signing_keys (key_id, public_key, private_key, created_at, active) "
            "VALUES (%s, %s, %s, now() - interval '1 day', false)",
            (kid, pem, b"\x00" * 32),
        )
        c.execute(
            "INSERT INTO audit_checkpoints (seq, head_hash, at, kind, key_id, signature) VALUES (%s, %s, %s, %s, "
            "%s, %s)",
            (seq, head, at, "periodic", kid, signature),
        )
    code, kinds, out = _verify(env)
    assert code == 1 and kinds == {"unknown-key"}, out
    assert f"signing key {kid} in the database is not in the pinned keys file" in out
    assert "checkpoint #" in out and f"signed by {kid}" in out
    # the real key, given explicitly, still vouches only for itself
    real_pem = Path(env["PALISADE_DATA_DIR"], "k.pem")
    real_pem.write_text(cli(env, "audit", "public-key").stdout)
    proc = cli(env, "audit", "verify", "--public-key", str(real_pem), check=False)
    assert proc.returncode == 1 and f"signed by {kid}" in proc.stdout, proc.stdout


def test_rotated_key_is_pinned_and_old_checkpoints_still_verify(trail) -> None:
    import json

    url, env = trail
    keys_file = Path(env["PALISADE_DATA_DIR"], "audit-keys.jsonl")
    old = [json.loads(line)["key_id"] for line in keys_file.read_text().splitlines()]
    new = cli(env, "audit", "rotate-key").stdout.strip().splitlines()[-1]
    pinned = [json.loads(line)["key_id"] for line in keys_file.read_text().splitlines()]
    assert len(old) == 1 and new != old[0] and pinned == [*old, new]
    with psycopg.connect(url) as c:
        kids = {r[0] for r in c.execute("SELECT DISTINCT key_id FROM audit_checkpoints")}
    assert kids == {old[0], new}  # the rotation event was checkpointed under the new key
    code, kinds, out = _verify(env)
    assert code == 0, out
    # a lost pin file is not silently replaced by the database's key table
    keys_file.unlink()
    code, kinds, out = _verify(env)
    assert code == 1 and kinds == {"unknown-key"}, out
