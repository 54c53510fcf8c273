"""Retention: prune records older than a cutoff while the rest stays verifiable.

A signed "anchor" checkpoint for the last pruned record is written first (in the same transaction as the
delete); ``verify`` then starts the chain at anchor.seq + 1 linking to anchor.head_hash. On Postgres the
append-only trigger is disabled for this one transaction, which only the table owner may do, so run
``palisade audit prune`` with the owner's database URL (the gateway's role cannot).

Scheduled pruning: with PALISADE_AUDIT_RETENTION_DAYS and PALISADE_AUDIT_PRUNE_INTERVAL_S set, each gateway runs
the prune every interval; a Postgres advisory lock (held for the prune's transaction) makes one process at a
time do it, the others skip that round. It needs the gateway to connect as the table owner; where it runs as
the restricted application role, schedule ``palisade audit prune`` (owner URL) from cron instead.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, func, insert, select, text

from gateway.audit.canonical import checkpoint_payload, iso
from gateway.audit.chain import AuditChain, append_head_line
from gateway.audit.events import AuditEvent, Tag
from gateway.db.audit import AuditCheckpoint, AuditRecord
from gateway.db.base import utcnow

_TRIGGER = "audit_records_append_only"
PRUNE_LOCK = 0x70616C6973616465  # "palisade": the advisory lock every pruner takes
_log = structlog.get_logger("palisade.audit")


async def prune(
    chain: AuditChain, before: datetime, *, wait: bool = True, actor: str = "cli"
) -> dict[str, Any] | None:
    """Delete records with ``at < before``; returns the anchor, or None when nothing is old enough (or, with
    ``wait=False``, when another process holds the pruning lock)."""
    db = chain.db
    async with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # one pruner at a time, across every process
            if wait:
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PRUNE_LOCK})
            elif not (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": PRUNE_LOCK})).scalar():
                return None
        last = (await conn.execute(select(func.max(AuditRecord.seq)).where(AuditRecord.at < before))).scalar()
        if last is None:
            return None
        head_hash = (await conn.execute(select(AuditRecord.hash).where(AuditRecord.seq == last))).scalar_one()
        at = utcnow()
        signer = chain.signer
        anchor = {"seq": last, "head_hash": head_hash, "at": at, "kind": "anchor", "key_id": signer.key_id}
        anchor["signature"] = signer.sign(
            checkpoint_payload(last, head_hash, iso(at), "anchor", signer.key_id)
        )
        await conn.execute(insert(AuditCheckpoint.__table__), [anchor])
        pg = conn.dialect.name == "postgresql"
        if pg:
            await conn.execute(text(f"ALTER TABLE audit_records DISABLE TRIGGER {_TRIGGER}"))
        deleted = (await conn.execute(delete(AuditRecord).where(AuditRecord.seq <= last))).rowcount
        if pg:
            await conn.execute(text(f"ALTER TABLE audit_records ENABLE TRIGGER {_TRIGGER}"))
    line = {**anchor, "at": iso(at)}
    append_head_line(chain.head_file, line)
    await chain.record(
        AuditEvent(
            Tag.AUDIT_PRUNE,
            actor=actor,
            target="audit_records",
            details={"before": iso(before), "through_seq": last, "deleted": deleted},
        )
    )
    return {**line, "deleted": deleted}


def start_scheduled_prune(chain: AuditChain) -> asyncio.Task[None] | None:
    """The periodic prune task, or None when retention or its interval is not configured."""
    days, interval = chain.settings.audit_retention_days, chain.settings.audit_prune_interval_s
    if days <= 0 or interval <= 0:
        return None
    return asyncio.create_task(_prune_loop(chain, days, interval), name="audit-retention")


async def _prune_loop(chain: AuditChain, days: int, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            done = await prune(chain, utcnow() - timedelta(days=days), wait=False, actor="retention")
        except Exception as exc:  # e.g. not the table owner: keep serving, say why
            _log.error("scheduled audit prune failed", error=type(exc).__name__, detail=str(exc)[:200])
            continue
        if done:
            _log.info("audit records pruned", through_seq=done["seq"], deleted=done["deleted"])
