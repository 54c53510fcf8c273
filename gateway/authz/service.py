"""``Authorization``: the one question every caller asks -- may this context do this action on this resource?

``require`` refuses with 403 (carrying the decision id, never the policy) and records the denial in the audit
trail; ``decide`` only answers (for listing what a caller may see). Routes, Celery tasks and console pages call
the same two methods with a ``RequestContext``.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.audit.events import AuditEvent, AuditTrail, Tag
from gateway.authz.attributes import environment
from gateway.authz.decision import Decision
from gateway.authz.enforcer import CasbinAuthorizer
from gateway.context import RequestContext
from gateway.errors import Forbidden
from gateway.observability import tracing


class DenialWatch(Protocol):
    def note(self, principal_id: str, tokens: int, *, denied: bool = False) -> None: ...


class Authorization:
    def __init__(self, decider: CasbinAuthorizer, audit: AuditTrail, watch: DenialWatch | None = None) -> None:
        self.decider = decider
        self.audit = audit
        self.watch = watch

    async def decide(self, ctx: RequestContext, action: str, resource: dict[str, Any] | None = None) -> Decision:
        env = environment(ctx.network) if ctx.network is not None else self.decider.environment_of(ctx.client_ip)
        return await self.decider.decide(ctx.principal, action, resource or {}, env)

    async def require(self, ctx: RequestContext, action: str, resource: dict[str, Any] | None = None) -> Decision:
        resource = resource or {}
        with tracing.span("authorization", action=action) as span:
            decision = await self.decide(ctx, action, resource)
            span.set_attribute("decision", "allow" if decision.allowed else "deny")
        if not decision.allowed:
            await self.audit.record(AuditEvent.of(
                ctx, Tag.AUTHZ_DENY, target=str(resource.get("model") or action), decision=decision.id,
                action=action, rule=decision.rule,
            ))
            if self.watch is not None:  # denials feed the principal's usage baseline (unusual use)
                self.watch.note(ctx.principal.id, 0, denied=True)
            raise Forbidden(decision_id=decision.id)
        return decision
