"""Audit event tags (``source:subject:action``) and the one recording interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class Tag:
    AUTHN_SUCCESS = "authn:principal:success"
    AUTHN_FAILURE = "authn:principal:failure"
    AUTHZ_DENY = "authz:decision:deny"
    INFERENCE = "inference:request:complete"
    INFERENCE_FAILED = "inference:request:failed"
    STREAM_START = "inference:stream:start"
    KEY_CREATE = "admin:key:create"
    KEY_REVOKE = "admin:key:revoke"
    MODEL_SEED = "admin:model:seed"


@dataclass(slots=True)
class AuditEvent:
    tag: str
    actor: str | None = None  # principal id, never a credential
    target: str | None = None
    decision: str | None = None  # "allow" / "deny" / decision id
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None  # set by the trail (UTC)


class AuditTrail(Protocol):
    async def record(self, event: AuditEvent) -> None:
        """Durably record the event before returning; raise on failure (callers fail closed with 503)."""
