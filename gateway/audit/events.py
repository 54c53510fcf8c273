"""Audit event tags (``source:subject:action``) and the one recording interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gateway.context import Anonymous, RequestContext


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
    # audit trail and keyring (issue 5)
    AUDIT_EXPORT = "audit:log:export"
    AUDIT_PRUNE = "audit:log:prune"
    AUDIT_KEY_ROTATE = "audit:key:rotate"
    AUDIT_CONTENT_READ = "audit:content:read"
    KEYRING_ROTATE = "admin:keyring:rotate"
    # identity (issue 3)
    TOKEN_ISSUE = "authn:token:issue"  # noqa: S105 (a name, not a secret)
    TOKEN_DENY = "authn:token:deny"  # noqa: S105 (a name, not a secret)
    LOGIN_PASSWORD = "authn:login:password"  # noqa: S105 (a name, not a secret)
    LOGIN_SUCCESS = "authn:login:success"
    LOGIN_FAILURE = "authn:login:failure"
    ACCOUNT_LOCKED = "authn:account:locked"
    STEP_UP = "authn:mfa:step-up"
    LOGOUT = "authn:session:logout"
    LOGOUT_ALL = "authn:session:logout-everywhere"
    MFA_ENROL = "authn:mfa:enrol"
    MFA_REMOVE = "authn:mfa:remove"
    RECOVERY_REGENERATE = "authn:mfa:recovery-regenerate"
    CLIENT_CREATE = "admin:client:create"
    CLIENT_DISABLE = "admin:client:disable"
    CLIENT_DELETE = "admin:client:delete"
    USER_CREATE = "admin:user:create"
    USER_DISABLE = "admin:user:disable"
    USER_ENABLE = "admin:user:enable"
    USER_UNLOCK = "admin:user:unlock"
    SIGNING_KEY_ROTATE = "admin:signing-key:rotate"
    # authorization and limits (issue 4)
    POLICY_CHANGE = "admin:policy:change"
    POLICY_ROLLBACK = "admin:policy:rollback"
    LIMITS_CHANGE = "admin:limit:change"
    USAGE_ANOMALY = "limits:usage:anomaly"
    PRINCIPAL_SUSPEND = "limits:principal:suspend"
    PRINCIPAL_UNSUSPEND = "limits:principal:unsuspend"
    # operations (issue 15)
    BACKUP_CREATE = "ops:backup:create"
    BACKUP_RESTORE = "ops:backup:restore"
    BACKUP_PRUNE = "ops:backup:prune"


@dataclass(slots=True)
class AuditEvent:
    tag: str
    actor: str | None = None  # principal id, never a credential
    target: str | None = None
    decision: str | None = None  # "allow" / "deny" / decision id
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None  # set by the trail (UTC)

    @classmethod
    def of(
        cls, ctx: RequestContext | Anonymous, tag: str, *, target: str | None = None, decision: str | None = None,
        **details: Any,
    ) -> AuditEvent:
        """The one way to describe an event: who (the context's principal), which request, from where."""
        if ctx.client_ip is not None:
            details.setdefault("client_ip", ctx.client_ip)
        actor = ctx.principal.id if isinstance(ctx, RequestContext) else None
        if isinstance(ctx, RequestContext) and ctx.origin != "http":
            details.setdefault("origin", ctx.origin)
        return cls(tag, actor=actor, target=target, decision=decision, request_id=ctx.request_id, details=details)


class AuditTrail(Protocol):
    async def record(self, event: AuditEvent) -> None:
        """Durably record the event before returning; raise on failure (callers fail closed with 503)."""
