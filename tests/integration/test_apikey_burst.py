"""API key checks that miss the cache together share one database read (a burst when an entry expires under
load), each still compares its own key, and a check that starts after a revocation never shares a read that
began before it. Embedded SQLite database, real ``CredentialCache``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import event

from gateway.authn.apikeys import ApiKeyService
from gateway.authn.revocation import CredentialCache
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings


async def test_a_burst_of_misses_reads_once_and_revocation_is_not_shared(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}")
    upgrade(settings)
    db = Database(settings)
    reads: list[str] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "api_keys" in statement:
            reads.append(statement)

    try:
        cache = CredentialCache(settings)  # embedded: usable without Redis
        keys = ApiKeyService(db, cache=cache)
        new = await keys.create("burst")
        wrong = new.key[:-1] + ("A" if new.key[-1] != "A" else "B")

        results = await asyncio.gather(*[keys.verify(new.key) for _ in range(20)], keys.verify(wrong))
        assert all(p is not None and p.key_id == new.id for p in results[:20])
        assert results[20] is None  # same prefix, wrong secret: refused though it shared the read
        assert len(reads) == 1

        # a read in flight when the key is revoked: checks that start afterwards read again and are refused
        cache.evict(new.id)
        reads.clear()
        before = asyncio.ensure_future(keys.verify(new.key))
        await asyncio.sleep(0)  # its read has started at the old generation
        await keys.revoke(new.id)
        after = await keys.verify(new.key)
        await before
        assert after is None
        assert len(reads) == 2
    finally:
        await db.close()
