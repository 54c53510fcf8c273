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
    #: an inference request is recorded twice, linked by request id: who asked for what (ACCEPTED, or STREAM_START
    #: for a stream), durable before any answer byte leaves; then how it ended (INFERENCE or INFERENCE_FAILED: usage,
    #: status, latency, the serving version, retained content), appended after the answer left
    INFERENCE_ACCEPTED = "inference:request:accepted"
    STREAM_START = "inference:stream:start"
    INFERENCE = "inference:request:complete"
    INFERENCE_FAILED = "inference:request:failed"
    KEY_CREATE = "admin:key:create"
    KEY_REVOKE = "admin:key:revoke"
    MODEL_SEED = "admin:model:seed"
    # training runs: every state change of a run
    RUN_CREATE = "training:run:create"
    RUN_APPROVE = "training:run:approve"
    RUN_CANCEL = "training:run:cancel"
    RUN_START = "training:run:start"
    RUN_FINISH = "training:run:finish"
    RUN_REQUEUE = "training:run:requeue"  # the reaper re-enqueued a run whose worker's lease expired
    # continuous evaluation of production versions (palisade.eval.continuous)
    EVAL_CONTINUOUS = "eval:production:check"
    EVAL_DRIFT = "eval:production:drift"
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
    # model registry and hot-swap
    MODEL_IMPORT = "registry:version:import"
    MODEL_REGISTER = "registry:version:register"
    MODEL_PROMOTE = "registry:alias:promote"
    MODEL_PROMOTE_DENIED = "registry:alias:promote-denied"
    MODEL_CANARY = "registry:alias:canary"
    #: a replica's canary watcher ended a canary whose thresholds were crossed (details: both versions' numbers)
    MODEL_CANARY_AUTO_ROLLBACK = "registry:alias:canary-auto-rollback"
    MODEL_ROLLBACK = "registry:alias:rollback"
    MODEL_GATE_OVERRIDE = "registry:version:gate-override"
    MODEL_REJECT = "registry:version:reject"
    MODEL_ARTIFACT_REJECTED = "registry:artifact:rejected"
    MODEL_SWAP = "registry:replica:swap"
    MODEL_SWAP_FAILED = "registry:replica:swap-failed"
    # governed datasets
    DATASET_CREATE = "dataset:version:create"
    DATASET_READY = "dataset:version:ready"
    DATASET_FAILED = "dataset:version:failed"
    DATASET_APPROVE = "dataset:version:approve"
    DATASET_REJECT = "dataset:version:reject"
    DATASET_DECISION_DENIED = "dataset:version:decision-denied"
    DATASET_BIAS_WAIVE = "dataset:bias:waive"
    DATASET_DELETE = "dataset:version:delete"
    DATASET_QUARANTINE_READ = "dataset:quarantine:read"
    DATASET_EXPORT = "dataset:version:export"
    DATASET_IMPORT_REFUSED = "dataset:import:refused"
    # files, batches, feedback
    FILE_CREATE = "batch:file:create"
    FILE_DELETE = "batch:file:delete"
    FILE_EXPIRE = "batch:file:expire"
    BATCH_CREATE = "batch:job:create"
    BATCH_START = "batch:job:start"
    BATCH_FAIL = "batch:job:fail"
    BATCH_CANCEL = "batch:job:cancel"
    BATCH_FINISH = "batch:job:finish"  # completed, cancelled or expired (details.status)
    FEEDBACK_SUBMIT = "feedback:rating:submit"
    FEEDBACK_EXPORT = "admin:feedback:export"
    # operations (issue 15)
    BACKUP_CREATE = "ops:backup:create"
    BACKUP_RESTORE = "ops:backup:restore"
    BACKUP_PRUNE = "ops:backup:prune"


#: the record of who asked for what, and the record of how the request ended (``palisade audit verify`` lists an
#: accepted request without a completion as open)
ACCEPTED_TAGS = frozenset({Tag.INFERENCE_ACCEPTED, Tag.STREAM_START})
COMPLETION_TAGS = frozenset({Tag.INFERENCE, Tag.INFERENCE_FAILED})


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
