"""Step-up MFA inside a console form: an action that needs a fresh MFA check shows a code field next to its own
submit button instead of sending the person to another page.

The form posts ``mfa_code`` with the action; a 6-digit value is a TOTP code, anything else a recovery code. A
good code refreshes the session's MFA time (exactly as ``POST /auth/step-up``) and the action goes ahead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from litestar import Request

from gateway.audit.events import Tag
from gateway.authn.stepup import has_fresh_mfa
from gateway.console.access import principal_of, record, services_of, session_id_of
from gateway.db.base import utcnow


async def ensure_step_up(request: Request, form: Any) -> bool:
    """True when the person's MFA is fresh, or a code sent with this form made it so."""
    principal = principal_of(request)
    if has_fresh_mfa(principal):
        return True
    code = str(form.get("mfa_code") or "").strip()
    session_id = session_id_of(request)
    if not code or principal.kind != "user" or not session_id:
        return False
    users = services_of(request).identity.users
    user_id = principal.id.removeprefix("user:")
    if len(code) == 6 and code.isdigit():
        ok, method = await users.verify_totp(user_id, code), "totp"
    else:
        ok, method = await users.use_recovery_code(user_id, code), "recovery"
    if not ok:
        await record(request, Tag.LOGIN_FAILURE, decision="deny", reason=f"step-up {method}")
        return False
    await services_of(request).identity.sessions.mark_mfa(session_id, method)
    await record(request, Tag.STEP_UP, decision="allow", mfa=method)
    # the rest of this request (templates, later checks) sees the fresh MFA time
    request.scope["user"] = replace(principal, mfa_at=utcnow())
    return True
