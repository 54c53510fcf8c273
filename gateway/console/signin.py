"""Sign-in (``/console/login``: ``username`` + ``password``, then ``code``), sign-out and sign-out everywhere.

The same identity services and the same two-stage session as ``/auth/login``: the password opens a 5-minute
pending session that reaches only the second step; the code (TOTP, or a recovery code in the same field) turns
it into an active session under a new id. The forms come before any session, so they carry a double-submit
token bound to a SameSite=Strict cookie. Every failure shows the same message.
"""

from __future__ import annotations

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.response import Redirect, Template

from gateway.api.deps import ServicesDep
from gateway.audit.events import AuditEvent, Tag
from gateway.authn.sessions import LOGIN_COOKIE, SESSION_COOKIE, clear_cookie, session_cookie
from gateway.authn.users import LoginFailed
from gateway.authz.actions import Action
from gateway.console.access import (
    CSRF_COOKIE,
    LOGIN_CSRF_COOKIE,
    UIDep,
    anonymous,
    client_ip,
    cookie,
    login_csrf_ok,
    new_login_csrf,
)
from gateway.console.security import HEADERS

PUBLIC = {"action": Action.PUBLIC}
MAX_FIELD = 1024


def _form_page(request: Request, step: str, *, error: str | None = None, status_code: int = 200,
               username: str = "") -> Template:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_login_csrf()
    return Template(
        template_name="login.html",
        context={"step": step, "error": error, "login_csrf": token, "username": username},
        status_code=status_code,
        headers=HEADERS,
        cookies=[cookie(LOGIN_CSRF_COOKIE, token, 900)],
    )


async def _record(services: ServicesDep, request: Request, tag: str, user_id: str | None, decision: str,
                  **details: object) -> None:
    event = AuditEvent.of(anonymous(request), tag, decision=decision, via="console", **details)
    event.actor = f"user:{user_id}" if user_id else None
    await services.audit.record(event)


async def _failed(services: ServicesDep, request: Request, reason: str, user_id: str | None,
                  step: str) -> Template:
    await services.identity.throttle.fail(client_ip(request))
    await _record(services, request, Tag.LOGIN_FAILURE, user_id, "deny", reason=reason)
    return _form_page(request, step, error=LoginFailed.MESSAGE, status_code=401)


@get("/login", opt=PUBLIC, include_in_schema=False)
async def login_form(request: Request) -> Template:
    return _form_page(request, "password")


@post("/login", opt=PUBLIC, include_in_schema=False, status_code=200)
async def login_password(request: Request, services: ServicesDep) -> Template:
    form = await request.form()
    if not login_csrf_ok(request, form.get("csrf_token")):
        return _form_page(request, "password", error="The form expired; please try again.", status_code=403)
    username = str(form.get("username") or "")[:200]
    password = str(form.get("password") or "")[:MAX_FIELD]
    ident = services.identity
    await ident.throttle.wait(client_ip(request))
    try:
        user = await ident.users.check_password(username, password)
    except LoginFailed as exc:
        return await _failed(services, request, str(exc), exc.user_id, "password")
    pending = await ident.sessions.create(user.id, stage="mfa", client_ip=client_ip(request))
    await _record(services, request, Tag.LOGIN_PASSWORD, user.id, "allow")
    page = _form_page(request, "code", username=username)
    page.cookies.append(session_cookie(LOGIN_COOKIE, pending.token, 300))
    return page


@post("/login/code", opt=PUBLIC, include_in_schema=False, status_code=200)
async def login_code(request: Request, services: ServicesDep) -> Response:
    form = await request.form()
    if not login_csrf_ok(request, form.get("csrf_token")):
        return _form_page(request, "password", error="The form expired; please try again.", status_code=403)
    ident = services.identity
    pending = await ident.sessions.get(request.cookies.get(LOGIN_COOKIE), stage="mfa")
    if pending is None:
        return _form_page(request, "password", error="Your sign-in took too long; start again.", status_code=401)
    code = str(form.get("code") or "").strip()[:64]
    if len(code) == 6 and code.isdigit():
        ok, method = await ident.users.verify_totp(pending.user_id, code), "totp"
    else:
        ok, method = await ident.users.use_recovery_code(pending.user_id, code), "recovery"
    if not ok:
        return await _failed(services, request, f"wrong or reused {method} code", pending.user_id, "code")
    new = await ident.sessions.promote(pending, method)
    await _record(services, request, Tag.LOGIN_SUCCESS, pending.user_id, "allow", mfa=method)
    ttl = ident.settings.session_absolute_s
    return Redirect(
        "/console/",
        status_code=303,
        headers=HEADERS,
        cookies=[
            session_cookie(SESSION_COOKIE, new.token, ttl),
            cookie(CSRF_COOKIE, new.csrf or "", ttl),
            clear_cookie(LOGIN_COOKIE),
            clear_cookie(LOGIN_CSRF_COOKIE),
        ],
    )


def _signed_out() -> Response:
    return Response(
        content="",
        status_code=200,
        headers={**HEADERS, "HX-Redirect": "/console/login"},
        cookies=[clear_cookie(SESSION_COOKIE), clear_cookie(CSRF_COOKIE)],
    )


@post("/logout", opt={"action": Action.SELF_WRITE}, include_in_schema=False, status_code=200)
async def logout(ui: UIDep) -> Response:
    if ui.session_id:
        await ui.services.identity.sessions.end(ui.session_id)
    await ui.record(Tag.LOGOUT)
    return _signed_out()


@post("/logout-everywhere", opt={"action": Action.SELF_WRITE}, include_in_schema=False, status_code=200)
async def logout_everywhere(ui: UIDep) -> Response:
    ended = await ui.services.identity.sessions.end_all(ui.user_id)
    await ui.record(Tag.LOGOUT_ALL, sessions=ended)
    return _signed_out()


@get("/", opt={"action": Action.SELF_READ}, include_in_schema=False)
async def home(ui: UIDep) -> Redirect:
    """Land on the first page the person's role may see."""
    items = await ui.nav()
    return Redirect(items[0].href if items else "/console/account", status_code=303)


@get("/{rest:path}", opt={"action": Action.SELF_READ}, include_in_schema=False)
async def not_found(rest: str) -> None:
    """Any other address under /console: a page saying so (for a signed-in person; others get 401 first)."""
    raise NotFoundException(f"no console page {rest[:100]}")


ROUTES = [login_form, login_password, login_code, logout, logout_everywhere, home, not_found]
