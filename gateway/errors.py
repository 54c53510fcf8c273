"""The one error shape: ``{"error": {"type", "message", "request_id", ...}}`` (OpenAI's), for every failure."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the client should see, with its HTTP status and OpenAI-style type."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self, request_id: str | None) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.error_type, "message": self.message, "request_id": request_id}
        if self.param is not None:
            err["param"] = self.param
        if self.code is not None:
            err["code"] = self.code
        err.update(self.extra)
        return {"error": err}


class BadRequest(ApiError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthenticated(ApiError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str = "missing or invalid credentials", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="palisade"'})
        super().__init__(message, **kw)


class Forbidden(ApiError):
    """Denied by policy: carries the decision id, never the policy text."""

    status_code = 403
    error_type = "permission_error"

    def __init__(self, message: str = "denied by policy", *, decision_id: str | None = None, **kw: Any) -> None:
        extra = kw.pop("extra", {}) or {}
        if decision_id:
            extra["decision_id"] = decision_id
        super().__init__(message, extra=extra, **kw)


class NotFound(ApiError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(ApiError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLarge(ApiError):
    status_code = 413
    error_type = "invalid_request_error"


class RateLimited(ApiError):
    status_code = 429
    error_type = "rate_limit_error"


class UpstreamError(ApiError):
    """The inference backend answered badly after it had started (or answered garbage)."""

    status_code = 502
    error_type = "upstream_error"


class ClientGone(ApiError):
    """The client disconnected before its answer started; nobody reads this (499, as nginx logs it)."""

    status_code = 499
    error_type = "client_closed_request"


class ServiceUnavailable(ApiError):
    """A dependency is down; we fail closed."""

    status_code = 503
    error_type = "service_unavailable"


class UpstreamTimeout(ApiError):
    status_code = 504
    error_type = "timeout_error"
