"""Step-up: actions that change policy, approve, create keys or export audit need MFA within the last 5 minutes.

Use it as a route guard (``guards=[require_fresh_mfa]``, after the app-wide ``authorize`` guard has set the
principal) or call :func:`ensure_fresh_mfa` inside a service. A person refreshes it with ``POST /auth/step-up``.
Apps have no second factor, so they never pass a step-up check.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.authn.principal import Principal
from gateway.db.base import utcnow
from gateway.errors import Forbidden

STEP_UP_WINDOW = timedelta(minutes=5)


def has_fresh_mfa(principal: Principal, *, now: datetime | None = None) -> bool:
    if principal.kind != "user" or principal.mfa_at is None:
        return False
    age = (now or utcnow()) - principal.mfa_at
    return timedelta(0) <= age + timedelta(seconds=5) and age <= STEP_UP_WINDOW


def ensure_fresh_mfa(principal: Principal) -> None:
    if not has_fresh_mfa(principal):
        raise Forbidden(
            "this action needs a multi-factor check within the last 5 minutes; POST /auth/step-up first",
            code="mfa_step_up_required",
        )


async def require_fresh_mfa(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):
        raise Forbidden("no authenticated principal", code="mfa_step_up_required")
    ensure_fresh_mfa(principal)
