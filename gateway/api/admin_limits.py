"""Admin API for limits (per principal / department / model), runtime options and suspensions, plus a
principal's own view of its limits and usage (``GET /v1/limits/{principal_id}``, object-level checked)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post, put

from gateway.api.deps import ServicesDep
from gateway.api.guard import principal_of
from gateway.audit.events import AuditEvent, Tag
from gateway.authz.actions import Action
from gateway.errors import BadRequest, NotFound
from gateway.limits.config import FIELDS, LimitsAdmin
from gateway.middleware import request_id_of

Limit = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Scope = Literal["principal", "department", "model"]


class LimitUpdate(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """null = inherit (principal default, then settings); 0 = unlimited at this scope."""

    requests_per_min: Limit | None = None
    tokens_per_min: Limit | None = None
    concurrency: Limit | None = None
    daily_tokens: Limit | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=2)] | None = None


class OptionUpdate(msgspec.Struct, forbid_unknown_fields=True):
    value: bool | float | int | None


class Suspension(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


def _rule_dict(r: Any) -> dict[str, Any]:
    return {
        "scope": r.scope,
        "subject": r.subject,
        **{f: getattr(r, f) for f in (*FIELDS, "priority")},
        "updated_by": r.updated_by,
        "updated_at": r.updated_at.isoformat(),
    }


async def _changed(services: ServicesDep, request: Request, tag: str, target: str, details: dict[str, Any]) -> None:
    s = services
    await s.audit.record(
        AuditEvent(
            tag,
            actor=principal_of(request).id,
            target=target,
            request_id=request_id_of(request.scope),
            details=details,
        )
    )
    await s.change_feed.publish("limits")


class LimitsController(Controller):
    path = "/admin/limits"
    tags = ["admin"]

    @get("/", opt={"action": Action.LIMIT_READ}, operation_id="getLimits")
    async def overview(self, request: Request, services: ServicesDep) -> dict[str, Any]:
        s = services
        admin = LimitsAdmin(s.db)
        return {
            "defaults": s.limits_config.defaults(),
            "rules": [_rule_dict(r) for r in await admin.list_rules()],
            "options": await admin.options(),
            "suspended": s.limits_config.snapshot.suspended,
            "mode": "memory" if s.redis is None else "redis",
        }

    @put("/{kind:str}/{subject:str}", opt={"action": Action.LIMIT_WRITE}, operation_id="setLimits")
    async def set_rule(
        self, request: Request, services: ServicesDep, kind: Scope, subject: str, data: LimitUpdate
    ) -> dict[str, Any]:
        values = msgspec.structs.asdict(data)
        try:
            row = await LimitsAdmin(services.db).set_rule(kind, subject, values, principal_of(request).id)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        await _changed(services, request, Tag.LIMITS_CHANGE, f"limits:{kind}:{subject}", {"set": values})
        return _rule_dict(row)

    @delete(
        "/{kind:str}/{subject:str}",
        opt={"action": Action.LIMIT_WRITE},
        operation_id="deleteLimits",
        status_code=200,
    )
    async def delete_rule(self, request: Request, services: ServicesDep, kind: Scope, subject: str) -> dict[str, Any]:
        if not await LimitsAdmin(services.db).delete_rule(kind, subject):
            raise NotFound(f"no limits set for {kind} {subject}")
        await _changed(services, request, Tag.LIMITS_CHANGE, f"limits:{kind}:{subject}", {"deleted": True})
        return {"deleted": True}

    @put("/options/{key:str}", opt={"action": Action.LIMIT_WRITE}, operation_id="setLimitOption")
    async def set_option(self, request: Request, services: ServicesDep, key: str, data: OptionUpdate) -> dict[str, Any]:
        try:
            await LimitsAdmin(services.db).set_option(key, data.value, principal_of(request).id)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        await _changed(services, request, Tag.LIMITS_CHANGE, f"option:{key}", {"value": data.value})
        return {"key": key, "value": data.value}

    @post(
        "/suspensions/{principal_id:str}",
        opt={"action": Action.LIMIT_WRITE},
        operation_id="suspendPrincipal",
        status_code=200,
    )
    async def suspend(
        self, request: Request, services: ServicesDep, principal_id: str, data: Suspension
    ) -> dict[str, Any]:
        changed = await LimitsAdmin(services.db).set_suspended(principal_id, data.reason)
        if changed:
            await _changed(services, request, Tag.PRINCIPAL_SUSPEND, principal_id, {"reason": data.reason})
        return {"principal_id": principal_id, "suspended": True}

    @delete(
        "/suspensions/{principal_id:str}",
        opt={"action": Action.LIMIT_WRITE},
        operation_id="unsuspendPrincipal",
        status_code=200,
    )
    async def unsuspend(self, request: Request, services: ServicesDep, principal_id: str) -> dict[str, Any]:
        if not await LimitsAdmin(services.db).set_suspended(principal_id, None):
            raise NotFound(f"{principal_id} is not suspended")
        await _changed(services, request, Tag.PRINCIPAL_UNSUSPEND, principal_id, {})
        return {"principal_id": principal_id, "suspended": False}


@get(
    "/v1/limits/{principal_id:str}",
    opt={"action": Action.USAGE_READ, "owner_param": "principal_id"},
    operation_id="getOwnLimits",
    tags=["limits"],
)
async def own_limits(
    request: Request, services: ServicesDep, principal_id: str, model: str | None = None
) -> dict[str, Any]:
    """Limits and current usage of ``principal_id``: the policy's owner check lets a caller read only its own."""
    s = services
    me = principal_of(request)
    if principal_id != me.id:
        raise NotFound("only your own limits can be read here; admins use /admin/limits")
    return await s.limiter.usage(me, model)


LIMITS_ROUTES = [LimitsController, own_limits]
