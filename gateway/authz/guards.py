"""The one guard on every route: authenticate, then ask the decision point for the route's action.

Deny by default: a handler without ``opt={"action": ...}`` is refused, so a forgotten declaration can never
open a route.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.audit.events import AuditEvent, Tag
from gateway.authn.principal import Principal
from gateway.authz.actions import Action
from gateway.authz.attributes import current_env
from gateway.errors import Forbidden
from gateway.middleware import request_id_of


async def authorize(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    action = handler.opt.get("action")
    if action == Action.PUBLIC:
        return
    services = connection.app.state.services
    principal = await services.authenticator.authenticate(connection)
    connection.scope["user"] = principal
    connection.scope["state"]["principal_id"] = principal.id
    environment_of = getattr(services.authorizer, "environment_of", None)
    if environment_of is not None:  # ABAC's r.env (time, client network) for every decision in this request
        current_env.set(environment_of(connection.client.host if connection.client else None))
    if action is None:
        raise Forbidden("route has no declared action")
    resource: dict[str, Any] = {}
    owner_param = handler.opt.get("owner_param")
    if owner_param:  # object-level check (BOLA): the path names whose object this is
        resource["owner"] = connection.path_params.get(owner_param)
    await check(connection, principal, action, resource)


async def check(
    connection: ASGIConnection[Any, Any, Any, Any], principal: Principal, action: str, resource: dict[str, Any]
) -> None:
    """Ask the decision point; on deny, audit and raise 403 carrying the decision id (never the policy)."""
    services = connection.app.state.services
    decision = await services.authorizer.decide(principal, action, resource)
    if not decision.allowed:
        await services.audit.record(
            AuditEvent(Tag.AUTHZ_DENY, actor=principal.id, target=resource.get("model") or action,
                       decision=decision.id, request_id=request_id_of(connection.scope),
                       details={"action": action, "rule": decision.rule})
        )
        if services.usage_watch is not None:  # denials feed the principal's usage baseline (unusual use)
            services.usage_watch.note(principal.id, 0, denied=True)
        raise Forbidden(decision_id=decision.id)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    return connection.scope["user"]
