"""Browser-facing protections of the console: strict headers on every answer and error pages people can read.

CSP allows only our own scripts and styles (no inline script, no inline style attribute, no eval); framing is
refused; answers are never cached. Errors from the shared guards (401, 403 with a decision id) become a page for a
browser and stay the one JSON error shape for anything else (tests, scripts), so the API contract holds.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Template

from gateway.errors import ApiError
from gateway.exceptions import EXCEPTION_HANDLERS
from gateway.middleware import request_id_of

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def secure(response: Response) -> Response:
    """The router's ``after_request`` hook: every console answer carries the headers."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") or request.headers.get("hx-request") == "true"


def _page(request: Request, status: int, title: str, message: str, **extra: Any) -> Response:
    context = {"title": title, "message": message, "status": status,
               "request_id": request_id_of(request.scope), **extra}
    headers = dict(HEADERS)
    if request.headers.get("hx-request") == "true" and status == 401:
        headers["HX-Redirect"] = "/console/login"
    return Template(template_name="error.html", context=context, status_code=status, headers=headers)


def console_error(request: Request, exc: Exception) -> Response:
    if not wants_html(request):
        for kind, handler in EXCEPTION_HANDLERS.items():
            if isinstance(exc, kind):
                return secure(handler(request, exc))  # type: ignore[operator]
    if isinstance(exc, ApiError):
        status, message = exc.status_code, exc.message
        if status == 401:
            return _page(request, 401, "Sign in", "Your session has ended or you are not signed in.",
                         login=True)
        if status == 403:
            decision = exc.extra.get("decision_id") if exc.extra else None
            text = message if exc.code in ("csrf_failed", "mfa_step_up_required") else (
                "Your role does not allow this page or action.")
            return _page(request, 403, "Not allowed", text, decision=decision)
        return _page(request, status, "Something was refused", message)
    if isinstance(exc, ValidationException):
        return _page(request, 400, "Bad input", exc.detail or "the form was not valid")
    if isinstance(exc, HTTPException):
        text = "No such page." if exc.status_code == 404 else (exc.detail or "request failed")
        return _page(request, exc.status_code, "Not found" if exc.status_code == 404 else "Error", text)
    EXCEPTION_HANDLERS[Exception](request, exc)  # logs it
    return _page(request, 500, "Internal error", "Something went wrong on our side.")


#: the same keys as the app's handlers: the most specific class wins across layers, so each must be overridden
CONSOLE_EXCEPTION_HANDLERS = {kind: console_error for kind in EXCEPTION_HANDLERS}
