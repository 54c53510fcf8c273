"""Is the audit trail able to record right now? ``/readyz`` asks, so a load balancer stops sending requests to a
gateway that would only answer them 503 (every audited request fails closed when its record cannot commit).

Ready means: the chain is open, its writer and checkpoint tasks run, the last checkpoint was signed and stored,
and the store accepts an append now. The last is a probe: a row inserted in a transaction that is rolled back,
so it meets the same grants, triggers, locks and disk as a real append without leaving a trace.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import structlog
from sqlalchemy import insert, text

from gateway.db.audit import AuditRecord
from gateway.db.base import utcnow

_log = structlog.get_logger("palisade.audit")
PROBE_TIMEOUT_S = 2.0


async def chain_ready(chain: Any) -> bool:
    """``chain`` is the AuditChain asking (its own health, read by its own package)."""
    tasks = (chain._writer, chain._ticker)  # noqa: SLF001 (the chain's own health, read by its own package)
    if chain._closed or any(t is None or t.done() for t in tasks):  # noqa: SLF001
        _log.warning("audit not ready", reason="writer stopped")
        return False
    if not chain.checkpoint_ok:
        _log.warning("audit not ready", reason="last checkpoint failed")
        return False
    try:
        await asyncio.wait_for(_probe_append(chain), timeout=PROBE_TIMEOUT_S + 1)
    except Exception as exc:
        _log.warning("audit not ready", reason="store refuses appends", error=type(exc).__name__)
        return False
    return True


async def store_accepts(chain: Any) -> bool:
    """Does the store take an append now? (the probe alone, rolled back)"""
    try:
        await asyncio.wait_for(_probe_append(chain), timeout=PROBE_TIMEOUT_S + 1)
    except Exception:
        return False
    return True


async def _probe_append(chain: Any) -> None:
    async with chain.db.engine.connect() as conn:
        trans = await conn.begin()
        try:
            if conn.dialect.name == "postgresql":
                ms = int(PROBE_TIMEOUT_S * 1000)
                await conn.execute(text(f"SET LOCAL lock_timeout = {ms}"))
                await conn.execute(text(f"SET LOCAL statement_timeout = {ms}"))
            # a negative seq no record has; random so that concurrent probes do not wait on each other
            seq = -1 - secrets.randbelow(2**62)
            await conn.execute(
                insert(AuditRecord.__table__),
                [
                    {
                        "seq": seq,
                        "at": utcnow(),
                        "tag": "audit:probe:ready",
                        "details": "{}",
                        "prev_hash": "",
                        "hash": "",
                    }
                ],
            )
        finally:
            await trans.rollback()
