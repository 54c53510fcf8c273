"""Policy changes as one operation for the admin API and the CLI: validate, store a version, audit, announce."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.audit.events import AuditEvent, Tag
from gateway.authn.principal import Principal
from gateway.authz.attributes import LEVELS, environment
from gateway.authz.document import PolicyError
from gateway.authz.enforcer import explain
from gateway.authz.store import PolicyStore
from gateway.db.policy import PolicyVersion
from gateway.errors import BadRequest

Record = Callable[[AuditEvent], Awaitable[None]]
Publish = Callable[[str], Awaitable[None]]


def version_dict(row: PolicyVersion, *, text: bool = True, diff: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": row.version,
        "sha256": row.sha256,
        "actor": row.actor,
        "reason": row.reason,
        "created_at": row.created_at.isoformat(),
        "restored_from": row.restored_from,
    }
    if text:
        out["text"] = row.text
    if diff:
        out["diff"] = row.diff
    return out


async def apply_policy(
    store: PolicyStore,
    record: Record,
    publish: Publish,
    *,
    text: str,
    actor: str,
    reason: str,
    request_id: str | None = None,
) -> PolicyVersion:
    try:
        row = await store.apply(text, actor=actor, reason=reason)
    except PolicyError as exc:
        raise BadRequest(f"policy refused: {exc}", param="text", code="invalid_policy") from None
    await record(
        AuditEvent(
            Tag.POLICY_CHANGE,
            actor=actor,
            target=f"policy:v{row.version}",
            request_id=request_id,
            details={
                "version": row.version,
                "sha256": row.sha256,
                "reason": row.reason,
                "diff": row.diff[:20_000],
            },
        )
    )
    await publish("policy")
    return row


async def rollback_policy(
    store: PolicyStore,
    record: Record,
    publish: Publish,
    *,
    version: int,
    actor: str,
    reason: str,
    request_id: str | None = None,
) -> PolicyVersion:
    row = await store.rollback(version, actor=actor, reason=reason)
    await record(
        AuditEvent(
            Tag.POLICY_ROLLBACK,
            actor=actor,
            target=f"policy:v{row.version}",
            request_id=request_id,
            details={
                "version": row.version,
                "restored_from": version,
                "reason": row.reason,
                "diff": row.diff[:20_000],
            },
        )
    )
    await publish("policy")
    return row


def test_principal(spec: dict[str, Any]) -> Principal:
    """A hypothetical caller for ``policy test``: kind, roles, department, clearance, auth method, MFA age."""
    kind = spec.get("kind", "user")
    if kind not in ("app", "user"):
        raise BadRequest("principal.kind must be app or user")
    clearance = spec.get("clearance")
    if clearance is not None and clearance not in LEVELS:
        raise BadRequest(f"principal.clearance must be one of {', '.join(LEVELS)}")
    method = spec.get("auth_method") or ("session" if kind == "user" else "api_key")
    if method not in ("api_key", "jwt", "session", "cli"):
        raise BadRequest("principal.auth_method must be api_key, jwt, session or cli")
    mfa_age = spec.get("mfa_age_s")
    attrs = {k: spec[k] for k in ("department", "clearance") if spec.get(k) is not None}
    return Principal(
        id=str(spec.get("id") or f"{kind}:test"),
        kind=kind,
        name="policy-test",
        auth_method=method,
        roles=tuple(spec.get("roles") or (("app",) if kind == "app" else ())),
        attributes=attrs,
        models=tuple(spec.get("models") or ()),
        mfa_at=None if mfa_age is None else datetime.now(UTC) - timedelta(seconds=float(mfa_age)),
    )


def test_policy(
    text: str,
    principal: dict[str, Any],
    action: str,
    resource: dict[str, Any],
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    env = env or {}
    at = env.get("at")
    try:
        when = datetime.fromisoformat(at).astimezone(UTC) if at else datetime.now(UTC)
    except ValueError:
        raise BadRequest("env.at must be an ISO-8601 time") from None
    environ = environment(str(env.get("network") or "internal"), when)
    try:
        return explain(text, test_principal(principal), action, resource, environ, datetime.now(UTC))
    except PolicyError as exc:
        raise BadRequest(f"policy refused: {exc}", param="text", code="invalid_policy") from None
