"""Exception handlers: every error leaves as ``{"error": {type, message, request_id}}``, never a stack trace."""

from __future__ import annotations

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from gateway.errors import ApiError
from gateway.middleware import request_id_of

_log = structlog.get_logger("palisade.errors")

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def _respond(request: Request, err: ApiError) -> Response:
    return Response(
        content=err.body(request_id_of(request.scope)), status_code=err.status_code, headers=err.headers,
        media_type="application/json",
    )


def api_error_handler(request: Request, exc: ApiError) -> Response:
    return _respond(request, exc)


def validation_handler(request: Request, exc: ValidationException) -> Response:
    detail = exc.detail or "invalid request"
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in extra[:5]:
        if isinstance(item, dict):
            key = item.get("key") or ""
            msg = item.get("message") or ""
            parts.append(f"{key}: {msg}" if key else msg)
    message = detail if not parts else f"{detail}: " + "; ".join(parts)
    return _respond(request, ApiError(message, status_code=400))


def http_exception_handler(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status == 413:
        message = "request body is too large"
    elif status == 404:
        message = f"no route {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    elif isinstance(exc.__cause__, SerializationException):
        message = f"request body is not valid JSON: {exc.detail}"
    else:
        message = exc.detail or "request failed"
    headers = dict(exc.headers or {})
    return _respond(request, ApiError(message, status_code=status, error_type=_HTTP_TYPES.get(status, "error"),
                                      headers=headers))


def internal_error_handler(request: Request, exc: Exception) -> Response:
    _log.error("unhandled error", request_id=request_id_of(request.scope), error=type(exc).__name__,
               exc_info=exc)
    return _respond(request, ApiError("internal error", status_code=500, error_type="server_error"))


EXCEPTION_HANDLERS = {
    ApiError: api_error_handler,
    ValidationException: validation_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
