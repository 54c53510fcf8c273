"""A person's own account: second factors (TOTP enrolment with a QR code, recovery codes, security keys) and
their sessions. Changing a factor needs the password again and a fresh MFA check, as the ``/auth/mfa/*`` API."""

from __future__ import annotations

from typing import Any

import segno
from litestar import get, post
from litestar.response import Template

from gateway.audit.events import Tag
from gateway.authn.passwords import verify_password
from gateway.authz.actions import Action
from gateway.console.access import UIDep, fragment
from gateway.console.stepup import ensure_step_up

READ = {"action": Action.SELF_READ}
WRITE = {"action": Action.SELF_WRITE}


async def _reauth(ui: UIDep, password: str) -> bool:
    users = ui.services.identity.users
    user = await users.get(ui.user_id)
    if user is None or not verify_password(user.password_hash, password):
        await users.record_failure(ui.user_id)
        await ui.record(Tag.LOGIN_FAILURE, decision="deny", reason="re-auth")
        return False
    return True


def _result(title: str, *, error: str | None = None, status_code: int = 200, **context: object) -> Template:
    return fragment("account_result.html", title=title, error=error, status_code=status_code, **context)


async def _checks(ui: UIDep, form: Any, title: str) -> Template | None:
    """Password again, plus a step-up code when the MFA check is older than 5 minutes."""
    if not await ensure_step_up(ui, form):
        return _result(title, error="Enter a code from your authenticator to confirm.", status_code=403)
    if not await _reauth(ui, str(form.get("password") or "")[:1024]):
        return _result(title, error="The password is not right.", status_code=401)
    return None


@get("/account", opt=READ, include_in_schema=False)
async def account(ui: UIDep) -> Template:
    ident = ui.services.identity
    user = await ident.users.get(ui.user_id)
    keys = await ident.users.webauthn_credentials(ui.user_id)
    return await ui.page("account.html", user=user, keys=keys, has_totp=user.totp_seed_enc is not None)


@post("/account/totp", opt=WRITE, include_in_schema=False, status_code=200)
async def totp_begin(ui: UIDep) -> Template:
    form = await ui.request.form()
    refused = await _checks(ui, form, "New authenticator")
    if refused:
        return refused
    uri = await ui.services.identity.users.begin_totp_change(ui.user_id)
    qr = segno.make(uri, error="m").svg_data_uri(scale=4)
    return fragment("account_totp.html", qr=qr, uri=uri)


@post("/account/totp/confirm", opt=WRITE, include_in_schema=False, status_code=200)
async def totp_confirm(ui: UIDep) -> Template:
    form = await ui.request.form()
    code = str(form.get("code") or "").strip()[:64]
    if not await ui.services.identity.users.confirm_totp_change(ui.user_id, code):
        return _result("New authenticator", error="That code does not match the new authenticator.",
                       status_code=400)
    await ui.record(Tag.MFA_ENROL, target=ui.principal.id, factor="totp")
    return _result("New authenticator", done="Your new authenticator is active; the old one no longer works.")


@post("/account/recovery-codes", opt=WRITE, include_in_schema=False, status_code=200)
async def recovery_codes(ui: UIDep) -> Template:
    form = await ui.request.form()
    refused = await _checks(ui, form, "Recovery codes")
    if refused:
        return refused
    codes = await ui.services.identity.users.regenerate_recovery_codes(ui.user_id)
    await ui.record(Tag.RECOVERY_REGENERATE, target=ui.principal.id)
    return _result("Recovery codes", codes=codes,
                   done="Each code works once. Keep them offline; they are not shown again.")


@post("/account/keys/{credential_id:str}/remove", opt=WRITE, include_in_schema=False, status_code=200)
async def remove_key(ui: UIDep, credential_id: str) -> Template:
    form = await ui.request.form()
    refused = await _checks(ui, form, "Security key")
    if refused:
        return refused
    if not await ui.services.identity.webauthn.remove(ui.user_id, credential_id[:64]):
        return _result("Security key", error="No such security key.", status_code=404)
    await ui.record(Tag.MFA_REMOVE, target=ui.principal.id, factor="webauthn", credential=credential_id[:64])
    return _result("Security key", done="The security key was removed.")


ROUTES = [account, totp_begin, totp_confirm, recovery_codes, remove_key]
