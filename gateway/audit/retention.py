"""Retention: prune records older than a cutoff while the rest stays verifiable.

A signed "anchor" checkpoint for the last pruned record is written first (in the same transaction as the
delete); ``verify`` then starts the chain at anchor.seq + 1 linking to anchor.head_hash. On Postgres the
append-only trigger is disabled for this one transaction, which only the table owner may do, so run
``palisade audit prune`` with the owner's database URL (the gateway's role cannot).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text

from gateway.audit.canonical import checkpoint_payload, iso
from gateway.audit.chain import AuditChain, append_head_line
from gateway.audit.events import AuditEvent, Tag
from gateway.db.audit import AuditCheckpoint, AuditRecord
from gateway.db.base import utcnow

_TRIGGER = "audit_records_append_only"


async def prune(chain: AuditChain, before: datetime) -> dict[str, Any] | None:
    """Delete records with ``at < before``; returns the anchor, or None when nothing is old enough."""
    db = chain.db
    async with db.engine.begin() as conn:
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
            actor="cli",
            target="audit_records",
            details={"before": iso(before), "through_seq": last, "deleted": deleted},
        )
    )
    return {**line, "deleted": deleted}
