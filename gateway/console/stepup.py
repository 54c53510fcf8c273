"""Step-up MFA inside a console form: an action that needs a fresh MFA check shows a code field next to its own
submit button instead of sending the person to another page.

The form posts ``mfa_code`` with the action; a 6-digit value is a TOTP code, anything else a recovery code. A
good code refreshes the session's MFA time (exactly as ``POST /auth/step-up``) and the action goes ahead.
"""

from __future__ import annotations

from typing import Any

from gateway.audit.events import Tag
from gateway.console.access import UI


async def ensure_step_up(ui: UI, form: Any) -> bool:
    """True when the person's MFA is fresh, or a code sent with this form made it so."""
    if ui.mfa_fresh:
        return True
    code = str(form.get("mfa_code") or "").strip()
    if not code or ui.principal.kind != "user" or not ui.session_id:
        return False
    users = ui.services.identity.users
    if len(code) == 6 and code.isdigit():
        ok, method = await users.verify_totp(ui.user_id, code), "totp"
    else:
        ok, method = await users.use_recovery_code(ui.user_id, code[:64]), "recovery"
    if not ok:
        await ui.record(Tag.LOGIN_FAILURE, decision="deny", reason=f"step-up {method}")
        return False
    await ui.services.identity.sessions.mark_mfa(ui.session_id, method)
    await ui.record(Tag.STEP_UP, decision="allow", mfa=method)
    ui.mfa_refreshed()
    return True
