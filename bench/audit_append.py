"""Audit append throughput on Postgres: the hash chain (durable, group-committed, concurrent producers) versus a
plain INSERT of the same rows (one per transaction, and batched), and verify speed.

    python -m bench.audit_append [--records 20000] [--verify-records 100000] [--producers 64]
                                 [--pg postgresql://postgres@127.0.0.1/postgres]

Creates and drops its own database. Appends ``--records`` through the chain (timed), then more until the trail
holds ``--verify-records`` (untimed), and verifies the whole trail: a verify rate over a trail that small that its
start-up (connections, keys, checkpoints: ~30–80 ms) weighs is not a per-record rate. Prints a small table and one
JSON line. Targets: append ≥ 5,000 records/s, verify ≥ 100,000 records/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy import insert, text

from gateway.audit.chain import AuditChain
from gateway.audit.events import AuditEvent, Tag
from gateway.audit.verify import verify_trail
from gateway.crypto import open_keyring
from gateway.db.audit import AuditRecord
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings


def _event(p: int, i: int) -> AuditEvent:
    return AuditEvent(
        Tag.INFERENCE,
        actor=f"key:{p:04d}",
        target="chat",
        decision="allow",
        request_id=f"{p}-{i}",
        details={"status": "ok", "prompt_tokens": 12, "completion_tokens": 40, "latency_ms": 81.5},
    )


async def _chain(settings: Settings, n: int, producers: int, trail: int = 0) -> tuple[float, list[dict]]:
    """Appends ``n`` records (timed) with ``producers`` concurrent callers, then more until the trail holds
    ``trail`` records (untimed)."""
    db = Database(settings)
    chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
    per = n // producers

    async def produce(p: int, start: int, count: int) -> None:
        for i in range(start, start + count):
            await chain.record(_event(p, i))

    t = time.perf_counter()
    await asyncio.gather(*(produce(p, 0, per) for p in range(producers)))
    elapsed = time.perf_counter() - t
    more = max(0, trail - per * producers) // producers
    await asyncio.gather(*(produce(p, per, more) for p in range(producers)))
    # the same rows for the plain inserts: scrubbed and canonicalised as the chain does, with a seq and hashes
    rows = [{**chain._prepare(_event(0, i)), "seq": i + 1, "prev_hash": "0" * 64, "hash": "0" * 64}
            for i in range(n)]
    await chain.close()
    await db.close()
    return per * producers / elapsed, rows


async def _plain(settings: Settings, rows: list[dict], producers: int, batch: int) -> float:
    db = Database(settings)
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS bench_plain"))
        await conn.execute(text("CREATE TABLE bench_plain (LIKE audit_records INCLUDING ALL)"))
    table = AuditRecord.__table__.to_metadata(__import__("sqlalchemy").MetaData(), name="bench_plain")
    chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    queue: asyncio.Queue = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)

    async def worker() -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            async with db.engine.begin() as conn:  # one transaction (one commit/fsync) per chunk
                await conn.execute(insert(table), chunk)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(producers, 25))))  # the pool's size
    elapsed = time.perf_counter() - t
    await db.close()
    return len(rows) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--verify-records", type=int, default=100_000)
    ap.add_argument("--producers", type=int, default=64)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    name = f"palisade_bench_{secrets.token_hex(3)}"
    with psycopg.connect(args.pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = args.pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                data_dir=Path(tmp),
                database_url=url,
                audit_checkpoint_every=10_000,
                audit_checkpoint_interval_s=3600,
            )
            upgrade(settings)
            chain_rate, rows = asyncio.run(_chain(settings, args.records, args.producers, args.verify_records))
            one_rate = asyncio.run(_plain(settings, rows[: max(2000, args.records // 5)], args.producers, 1))
            batch_rate = asyncio.run(_plain(settings, rows, args.producers, 500))
            t = time.perf_counter()
            report = verify_trail(
                url, head_file=Path(tmp) / "audit-head.jsonl", keys_file=Path(tmp) / "audit-keys.jsonl"
            )
            verify_rate = report.records / (time.perf_counter() - t)
            assert report.ok, [str(p) for p in report.problems]
    finally:
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"{'what':<60}{'records/s':>12}")
    print(
        f"{'audit chain append (durable, ' + str(args.producers) + ' producers, group commit)':<60}{chain_rate:>12,.0f}"
    )
    print(f"{'plain INSERT, one row per transaction':<60}{one_rate:>12,.0f}")
    print(f"{'plain INSERT, 500 rows per transaction':<60}{batch_rate:>12,.0f}")
    what = f"audit verify (chain + checkpoints), {report.records:,} records"
    print(f"{what:<60}{verify_rate:>12,.0f}")
    print(
        json.dumps(
            {
                "bench": "audit_append",
                "records": args.records,
                "producers": args.producers,
                "chain_append_per_s": round(chain_rate),
                "plain_insert_per_s": round(one_rate),
                "plain_insert_batched_per_s": round(batch_rate),
                "verify_per_s": round(verify_rate),
                "verify_records": report.records,
                "append_vs_plain": round(chain_rate / one_rate, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
