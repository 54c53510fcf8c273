"""Scheduled retention on real Postgres: the chain prunes old records itself every interval, only while it can
take the pruning advisory lock (one process at a time), and the rest of the trail still verifies."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from gateway.audit.chain import AuditChain
from gateway.audit.events import AuditEvent, Tag
from gateway.audit.retention import PRUNE_LOCK, start_scheduled_prune
from gateway.audit.verify import verify_trail
from gateway.crypto import open_keyring
from gateway.db.base import utcnow
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_db(pg_url: str):
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    name = f"palisade_retention_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield f"{pg_url.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as c:
        return c.execute(sql).fetchone()[0]


def test_scheduled_prune_takes_the_lock_and_keeps_the_trail_verifiable(pg_db: str, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_db.replace("postgresql://", "postgresql+psycopg://"),
        audit_checkpoint_interval_s=3600,
        audit_retention_days=7,
        audit_prune_interval_s=0.2,
    )
    upgrade(settings)
    old = utcnow() - timedelta(days=30)

    async def run() -> None:
        db = Database(settings)
        chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
        chain.adopt(start_scheduled_prune(chain))  # as the composition root does
        try:
            with psycopg.connect(pg_db, autocommit=True) as other:  # another process is pruning right now
                assert other.execute("SELECT pg_try_advisory_lock(%s)", (PRUNE_LOCK,)).fetchone()[0]
                for i in range(5):
                    await chain.record(AuditEvent(Tag.INFERENCE, actor=f"old:{i}", target="tiny", at=old))
                for i in range(3):
                    await chain.record(AuditEvent(Tag.INFERENCE, actor=f"new:{i}", target="tiny"))
                await asyncio.sleep(1.0)  # several rounds: every one skipped
                assert _count(pg_db, "SELECT count(*) FROM audit_records WHERE actor LIKE 'old:%'") == 5
                other.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK,))
            for _ in range(50):
                await asyncio.sleep(0.1)
                if _count(pg_db, "SELECT count(*) FROM audit_records WHERE tag = 'audit:log:prune'"):
                    break
        finally:
            await chain.close()
            await db.close()

    asyncio.run(run())
    with psycopg.connect(pg_db) as c:
        actors = [r[0] for r in c.execute("SELECT actor FROM audit_records ORDER BY seq")]
    assert actors == ["new:0", "new:1", "new:2", "retention"]  # pruned once, the prune itself audited
    assert _count(pg_db, "SELECT count(*) FROM audit_checkpoints WHERE kind = 'anchor' AND seq = 5") == 1
    report = verify_trail(
        pg_db.replace("postgresql://", "postgresql+psycopg://"),
        head_file=tmp_path / "audit-head.jsonl",
        keys_file=tmp_path / "audit-keys.jsonl",
    )
    assert report.ok and report.first_seq == 6 and report.records == 4, [str(p) for p in report.problems]
