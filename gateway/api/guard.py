"""The one guard on every route: authenticate, build the request's ``RequestContext``, then ask the decision
point for the route's action.

Deny by default: a handler without ``opt={"action": ...}`` is refused, so a forgotten declaration can never
open a route. The guard is made by the composition root with the process's services (``make_authorize``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.types import Receive

from gateway.authn.principal import Principal
from gateway.authz.actions import Action
from gateway.context import RequestContext, new_request_id
from gateway.errors import Forbidden
from gateway.observability import tracing

if TYPE_CHECKING:
    from gateway.services import Services

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Any]


def make_authorize(services: Callable[[], Services]) -> Guard:
    async def authorize(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        action = handler.opt.get("action")
        if action == Action.PUBLIC:
            return
        s = services()
        with tracing.span("authentication") as span:
            principal = await s.authenticator.authenticate(connection)
            span.set_attribute("auth_method", principal.auth_method)
        state = connection.scope["state"]
        connection.scope["user"] = principal
        state["principal_id"] = principal.id
        ctx = RequestContext(principal, state.get("request_id") or new_request_id(),
                             connection.client.host if connection.client else None,
                             gone=_disconnect_of(connection.receive))
        state["ctx"] = ctx
        if action is None:
            raise Forbidden("route has no declared action")
        resource: dict[str, Any] = {}
        owner_param = handler.opt.get("owner_param")
        if owner_param:  # object-level check (BOLA): the path names whose object this is
            resource["owner"] = connection.path_params.get(owner_param)
        await s.authz.require(ctx, action, resource)

    return authorize


def _disconnect_of(receive: Receive) -> Callable[[], Awaitable[None]]:
    """Returns once the client has disconnected (after its body was read, the next ASGI message is that)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return gone


def context_of(connection: ASGIConnection[Any, Any, Any, Any]) -> RequestContext:
    """The context the guard built for this request (the ``ctx`` dependency of every guarded handler)."""
    return connection.scope["state"]["ctx"]


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    return connection.scope["user"]
