"""Admin API for the ABAC policy: read, history, diff, test a candidate, apply (step-up MFA), roll back."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import Parameter

from gateway.api.deps import ServicesDep
from gateway.api.guard import principal_of
from gateway.authn.stepup import require_fresh_mfa
from gateway.authz.actions import Action
from gateway.authz.admin import apply_policy, rollback_policy, test_policy, version_dict
from gateway.authz.document import unified_diff
from gateway.errors import NotFound
from gateway.middleware import request_id_of

Text = Annotated[str, msgspec.Meta(max_length=2_000_000)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class PolicyChange(msgspec.Struct, forbid_unknown_fields=True):
    """Who changed it is the authenticated caller, never a field (BOPLA)."""

    text: Text
    reason: Reason


class PolicyRollback(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class PolicyCandidate(msgspec.Struct, forbid_unknown_fields=True):
    text: Text


class PolicyTest(msgspec.Struct, forbid_unknown_fields=True):
    action: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    principal: dict[str, Any] = msgspec.field(default_factory=dict)
    resource: dict[str, Any] = msgspec.field(default_factory=dict)
    env: dict[str, Any] = msgspec.field(default_factory=dict)
    text: Text | None = None  # candidate; default: the current policy


class PolicyController(Controller):
    path = "/admin/policies"
    tags = ["admin"]

    @get("/", opt={"action": Action.POLICY_READ}, operation_id="getPolicy")
    async def current(self, request: Request, services: ServicesDep) -> dict[str, Any]:
        row = await services.policy_store.current()
        if row is None:
            raise NotFound("no policy is stored")
        return version_dict(row, diff=False)

    @get("/history", opt={"action": Action.POLICY_READ}, operation_id="listPolicyVersions")
    async def history(
        self, request: Request, services: ServicesDep, limit: Annotated[int, Parameter(ge=1, le=500)] = 50
    ) -> dict[str, Any]:
        rows = await services.policy_store.history(limit)
        return {"versions": [version_dict(r, text=False, diff=False) for r in rows]}

    @get("/{version:int}", opt={"action": Action.POLICY_READ}, operation_id="getPolicyVersion")
    async def version(self, request: Request, services: ServicesDep, version: int) -> dict[str, Any]:
        return version_dict(await services.policy_store.get(version))

    @post("/diff", opt={"action": Action.POLICY_READ}, operation_id="diffPolicy", status_code=200)
    async def diff(self, request: Request, services: ServicesDep, data: PolicyCandidate) -> dict[str, Any]:
        row = await services.policy_store.current()
        return {
            "version": row.version if row else 0,
            "diff": unified_diff(row.text if row else "", data.text),
        }

    @post("/test", opt={"action": Action.POLICY_READ}, operation_id="testPolicy", status_code=200)
    async def test(self, request: Request, services: ServicesDep, data: PolicyTest) -> dict[str, Any]:
        text = data.text
        if text is None:
            row = await services.policy_store.current()
            text = row.text if row else ""
        return test_policy(text, data.principal, data.action, data.resource, data.env)

    @post(
        "/",
        opt={"action": Action.POLICY_WRITE},
        guards=[require_fresh_mfa],
        operation_id="applyPolicy",
        status_code=201,
    )
    async def apply(self, request: Request, services: ServicesDep, data: PolicyChange) -> dict[str, Any]:
        s = services
        row = await apply_policy(
            s.policy_store,
            s.audit.record,
            s.change_feed.publish,
            text=data.text,
            actor=principal_of(request).id,
            reason=data.reason,
            request_id=request_id_of(request.scope),
        )
        return version_dict(row, text=False)

    @post(
        "/{version:int}/rollback",
        opt={"action": Action.POLICY_WRITE},
        guards=[require_fresh_mfa],
        operation_id="rollbackPolicy",
        status_code=201,
    )
    async def rollback(
        self, request: Request, services: ServicesDep, version: int, data: PolicyRollback
    ) -> dict[str, Any]:
        s = services
        row = await rollback_policy(
            s.policy_store,
            s.audit.record,
            s.change_feed.publish,
            version=version,
            actor=principal_of(request).id,
            reason=data.reason,
            request_id=request_id_of(request.scope),
        )
        return version_dict(row, text=False)


POLICY_ROUTES = [PolicyController]
