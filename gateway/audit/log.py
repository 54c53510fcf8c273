"""Audit trail that writes JSON lines through structlog (the embedded default until the hash chain lands)."""

from __future__ import annotations

from dataclasses import asdict

import structlog

from gateway.audit.events import AuditEvent
from gateway.db.base import utcnow

_log = structlog.get_logger("palisade.audit")


class LogAuditTrail:
    async def record(self, event: AuditEvent) -> None:
        event.at = event.at or utcnow()
        fields = asdict(event)
        fields["at"] = event.at.isoformat()
        _log.info("audit", **{k: v for k, v in fields.items() if v not in (None, {})})
