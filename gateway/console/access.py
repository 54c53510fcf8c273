"""What every console page needs from the gateway: the services, the signed-in person, what they may do, CSRF.

The console is a client of the same services and the same policy as the JSON API. Each handler declares its
policy action in ``opt`` (checked by the app-wide ``authorize`` guard, so a URL typed by hand is refused like a
menu click), and the menus ask the same decision point which entries to show.

``services_of`` is the one place that knows how a handler reaches the services, so moving to dependency
injection changes one line.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.datastructures import Cookie
from litestar.response import Template

from gateway.audit.events import AuditEvent
from gateway.authn.principal import Principal
from gateway.authn.stepup import has_fresh_mfa
from gateway.authz.actions import Action
from gateway.middleware import request_id_of

#: the plaintext CSRF token of the console session (HttpOnly: only the server reads it, to render it into the
#: page's htmx headers; the session row keeps only its hash, which the authenticator checks)
CSRF_COOKIE = "__Host-palisade_console_csrf"
#: double-submit token for the sign-in forms, which come before any session exists
LOGIN_CSRF_COOKIE = "__Host-palisade_console_login_csrf"


def services_of(request: Request) -> Any:
    """The gateway's services for this request."""
    return request.app.state.services


def principal_of(request: Request) -> Principal:
    return request.scope["user"]


def session_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("session_id")


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def csrf_of(request: Request) -> str:
    return request.cookies.get(CSRF_COOKIE, "")


def cookie(name: str, value: str, max_age: int) -> Cookie:
    return Cookie(key=name, value=value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def login_csrf_ok(request: Request, sent: str | None) -> bool:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
    return bool(expected) and hmac.compare_digest(expected, sent or "")


async def record(request: Request, tag: str, *, target: str | None = None, decision: str | None = None,
                 actor: str | None = None, **details: Any) -> None:
    """One audit event for a console action, as the API records it (actor = the signed-in person)."""
    if actor is None and isinstance(request.scope.get("user"), Principal):
        actor = principal_of(request).id
    await services_of(request).audit.record(
        AuditEvent(tag, actor=actor, target=target, decision=decision, request_id=request_id_of(request.scope),
                   details={"client_ip": client_ip(request), "via": "console", **details})
    )


async def can(request: Request, action: str, resource: dict[str, Any] | None = None) -> bool:
    """Would the policy allow this person ``action``? (For menus and buttons; handlers are guarded anyway.)"""
    decision = await services_of(request).authorizer.decide(principal_of(request), action, resource or {})
    return decision.allowed


@dataclass(frozen=True)
class NavItem:
    href: str
    label: str
    action: str


NAV = (
    NavItem("/console/dashboard", "Dashboard", Action.AUDIT_READ),
    NavItem("/console/people", "People", Action.USER_READ),
    NavItem("/console/apps", "Apps", Action.CLIENT_READ),
    NavItem("/console/keys", "API keys", Action.KEY_READ),
    NavItem("/console/policies", "Policies", Action.POLICY_READ),
    NavItem("/console/limits", "Limits", Action.LIMIT_READ),
    NavItem("/console/audit", "Audit", Action.AUDIT_READ),
    NavItem("/console/account", "My account", Action.SELF_READ),
)


async def nav_for(request: Request) -> list[NavItem]:
    return [item for item in NAV if await can(request, item.action)]


async def base_context(request: Request) -> dict[str, Any]:
    p = principal_of(request)
    return {
        "me": p,
        "nav": await nav_for(request),
        "csrf": csrf_of(request),
        "mfa_fresh": has_fresh_mfa(p),
        "path": request.url.path,
    }


async def page(request: Request, template: str, /, *, status_code: int = 200, **context: Any) -> Template:
    """A full page (or, for an htmx request naming a target, the same template's fragment) with the base context."""
    return Template(template_name=template, context={**await base_context(request), **context},
                    status_code=status_code)


def fragment(template: str, /, *, status_code: int = 200, **context: Any) -> Template:
    """An htmx partial: no layout, only what replaces the target."""
    return Template(template_name=template, context=context, status_code=status_code)
