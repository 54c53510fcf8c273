"""Every action a route can require, named ``<scope>:<resource>:<action>``.

``PUBLIC`` marks the few routes DESIGN.md lists as reachable without a principal.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    PUBLIC = "public"
    # inference (apps and people)
    MODEL_INVOKE = "inference:model:invoke"
    MODEL_LIST = "inference:model:list"
    SCHEMA_READ = "api:schema:read"
    # administration
    KEY_READ = "admin:key:read"
    KEY_WRITE = "admin:key:write"
    CLIENT_READ = "admin:client:read"
    CLIENT_WRITE = "admin:client:write"
    USER_READ = "admin:user:read"
    USER_WRITE = "admin:user:write"
    POLICY_READ = "admin:policy:read"
    POLICY_WRITE = "admin:policy:write"
    LIMIT_READ = "admin:limit:read"
    LIMIT_WRITE = "admin:limit:write"
    MODEL_READ = "admin:model:read"
    MODEL_WRITE = "admin:model:write"
    # model registry: importing a model (a candidate) vs putting a version in front of traffic (an approval)
    MODEL_IMPORT = "admin:model:import"
    MODEL_PROMOTE = "approval:model:promote"
    MODEL_CANARY = "approval:model:canary"
    MODEL_ROLLBACK = "approval:model:rollback"
    MODEL_GATE_OVERRIDE = "approval:model:override-gate"
    # governed datasets: registering and reading (owner-scoped), and the four-eyes decision on a version
    DATASET_CREATE = "dataset:version:create"
    DATASET_READ = "dataset:version:read"
    DATASET_DELETE = "dataset:version:delete"
    DATASET_QUARANTINE_READ = "dataset:quarantine:read"
    #: records of a version with a tag/label, decrypted into an evaluation-set file
    DATASET_EXPORT = "dataset:version:export"
    DATASET_APPROVE = "approval:dataset:approve"
    DATASET_REJECT = "approval:dataset:reject"
    # audit
    AUDIT_READ = "audit:log:read"
    AUDIT_EXPORT = "audit:log:export"
    # self-service (a person's own session, MFA, credentials)
    SELF_READ = "self:account:read"
    SELF_WRITE = "self:account:write"
    # limits (issue 4): a principal reads its own limits and usage (BOLA-checked against the owner)
    USAGE_READ = "limits:usage:read"
    # token-signing keys (issue 3)
    SIGNING_KEY_READ = "admin:signing-key:read"
    SIGNING_KEY_WRITE = "admin:signing-key:write"
    # training runs: ML engineers request and follow their own runs; approvers approve others' runs
    RUN_CREATE = "training:run:create"
    RUN_READ = "training:run:read"
    RUN_CANCEL = "training:run:cancel"
    RUN_APPROVE = "approval:run:approve"
    # files and batches (OpenAI Batch API): checked per route (owner "") and per object (owner = its principal);
    # anyone the policy does not allow on an object gets 404, never 403
    FILE_CREATE = "batch:file:create"
    FILE_READ = "batch:file:read"
    FILE_DELETE = "batch:file:delete"
    BATCH_CREATE = "batch:job:create"
    BATCH_READ = "batch:job:read"
    BATCH_CANCEL = "batch:job:cancel"
    # feedback on answers: rating your own requests; reading rates and exporting datasets is administration
    FEEDBACK_CREATE = "feedback:rating:create"
    FEEDBACK_READ = "admin:feedback:read"
    FEEDBACK_EXPORT = "admin:feedback:export"


#: Routes reachable without a principal (DESIGN.md "Health" and "Auth").
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/oauth/token",
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        # a person's login steps: password, then one second factor (issue 3)
        "/auth/login",
        "/auth/login/totp",
        "/auth/login/recovery",
        "/auth/login/webauthn/options",
        "/auth/login/webauthn",
        # the console's sign-in forms and its vendored static assets (DESIGN.md "Console")
        "/console/login",
        "/console/login/code",
        "/console/static/{file_path:path}",
    }
)
