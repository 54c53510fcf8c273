"""What every console page needs from the gateway, as one injected object: ``ui: UIDep``.

``UI`` bundles the request, the process's ``Services`` and the request's ``RequestContext`` (both injected by the
composition root) with what pages do with them: ask the policy whether to show a menu or a button, record an
audit event, render a page with the layout's context. The console is a client of the same services and the
same policy as the JSON API: each handler declares its policy action in ``opt`` (checked by the app-wide guard,
so a URL typed by hand is refused like a menu click), and the menus ask the same decision point.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, replace
from typing import Annotated, Any

from litestar import Request
from litestar.datastructures import Cookie
from litestar.di import Provide
from litestar.params import Dependency
from litestar.response import Template

from gateway.api.deps import ContextDep, ServicesDep
from gateway.audit.events import AuditEvent
from gateway.authn.principal import Principal
from gateway.authn.stepup import has_fresh_mfa
from gateway.authz.actions import Action
from gateway.context import Anonymous, RequestContext
from gateway.db.base import utcnow
from gateway.middleware import request_id_of
from gateway.services import Services

#: the plaintext CSRF token of the console session (HttpOnly: only the server reads it, to render it into the
#: page's htmx headers; the session row keeps only its hash, which the authenticator checks on unsafe methods)
CSRF_COOKIE = "__Host-palisade_console_csrf"
#: double-submit token for the sign-in forms, which come before any session exists
LOGIN_CSRF_COOKIE = "__Host-palisade_console_login_csrf"


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def anonymous(request: Request) -> Anonymous:
    """What the audit trail can say of a request before sign-in."""
    return Anonymous(request_id_of(request.scope) or "", client_ip(request))


def cookie(name: str, value: str, max_age: int) -> Cookie:
    return Cookie(key=name, value=value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def login_csrf_ok(request: Request, sent: str | None) -> bool:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
    return bool(expected) and hmac.compare_digest(expected, sent or "")


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
    NavItem("/console/datasets", "Datasets", Action.DATASET_READ),
    NavItem("/console/runs", "Training", Action.RUN_READ),
    NavItem("/console/models", "Models", Action.MODEL_READ),
    NavItem("/console/audit", "Audit", Action.AUDIT_READ),
    NavItem("/console/account", "My account", Action.SELF_READ),
)


class UI:
    """One signed-in request as the console sees it."""

    def __init__(self, request: Request, services: Services, ctx: RequestContext) -> None:
        self.request = request
        self.services = services
        self.ctx = ctx

    @property
    def principal(self) -> Principal:
        return self.ctx.principal

    @property
    def user_id(self) -> str:
        return self.principal.id.removeprefix("user:")

    @property
    def session_id(self) -> str | None:
        return self.request.scope.get("state", {}).get("session_id")

    @property
    def mfa_fresh(self) -> bool:
        return has_fresh_mfa(self.principal)

    def mfa_refreshed(self) -> None:
        """The rest of this request (templates, later checks) sees the MFA check that just succeeded."""
        self.ctx = replace(self.ctx, principal=replace(self.principal, mfa_at=utcnow()))
        self.request.scope["user"] = self.ctx.principal

    async def can(self, action: str, resource: dict[str, Any] | None = None) -> bool:
        """Would the policy allow this? (Menus and buttons; every handler is guarded anyway.)"""
        return (await self.services.authz.decide(self.ctx, action, resource or {})).allowed

    async def record(self, tag: str, *, target: str | None = None, decision: str | None = None,
                     **details: Any) -> None:
        await self.services.audit.record(AuditEvent.of(self.ctx, tag, target=target, decision=decision,
                                                       via="console", **details))

    async def nav(self) -> list[NavItem]:
        return [item for item in NAV if await self.can(item.action)]

    async def page(self, template: str, /, *, status_code: int = 200, **context: Any) -> Template:
        """A full page: the layout's context (who, menus, CSRF token, MFA freshness) plus the page's own."""
        base = {"me": self.principal, "nav": await self.nav(), "csrf": self.request.cookies.get(CSRF_COOKIE, ""),
                "mfa_fresh": self.mfa_fresh, "path": self.request.url.path}
        return Template(template_name=template, context={**base, **context}, status_code=status_code)


def fragment(template: str, /, *, status_code: int = 200, **context: Any) -> Template:
    """An htmx partial: no layout, only what replaces the target."""
    return Template(template_name=template, context=context, status_code=status_code)


def _ui(request: Request, services: ServicesDep, ctx: ContextDep) -> UI:
    return UI(request, services, ctx)


#: the console router's dependency: ``ui: UIDep`` in a handler
PROVIDE_UI = Provide(_ui, sync_to_thread=False)
UIDep = Annotated[UI, Dependency(skip_validation=True)]
