"""A person's own account: second factors (TOTP enrolment with a QR code, recovery codes, security keys) and
their sessions. Changing a factor needs the password again and a fresh MFA check, as the ``/auth/mfa/*`` API."""

from __future__ import annotations

import segno
from litestar import Request, get, post
from litestar.response import Template

from gateway.audit.events import Tag
from gateway.authn.passwords import verify_password
from gateway.authz.actions import Action
from gateway.console.access import fragment, page, principal_of, record, services_of
from gateway.console.stepup import ensure_step_up

READ = {"action": Action.SELF_READ}
WRITE = {"action": Action.SELF_WRITE}


def _user_id(request: Request) -> str:
    return principal_of(request).id.removeprefix("user:")


async def _reauth(request: Request, password: str) -> bool:
    users = services_of(request).identity.users
    user = await users.get(_user_id(request))
    if user is None or not verify_password(user.password_hash, password):
        await users.record_failure(_user_id(request))
        await record(request, Tag.LOGIN_FAILURE, decision="deny", reason="re-auth")
        return False
    return True


def _result(title: str, *, error: str | None = None, status_code: int = 200, **context: object) -> Template:
    return fragment("account_result.html", title=title, error=error, status_code=status_code, **context)


async def _checks(request: Request, form: object, title: str) -> Template | None:
    """Password again, plus a step-up code when the MFA check is older than 5 minutes."""
    if not await ensure_step_up(request, form):
        return _result(title, error="Enter a code from your authenticator to confirm.", status_code=403)
    if not await _reauth(request, str(form.get("password") or "")[:1024]):  # type: ignore[attr-defined]
        return _result(title, error="The password is not right.", status_code=401)
    return None


@get("/account", opt=READ, include_in_schema=False)
async def account(request: Request) -> Template:
    ident = services_of(request).identity
    user = await ident.users.get(_user_id(request))
    keys = await ident.users.webauthn_credentials(_user_id(request))
    return await page(request, "account.html", user=user, keys=keys, has_totp=user.totp_seed_enc is not None)


@post("/account/totp", opt=WRITE, include_in_schema=False, status_code=200)
async def totp_begin(request: Request) -> Template:
    form = await request.form()
    refused = await _checks(request, form, "New authenticator")
    if refused:
        return refused
    uri = await services_of(request).identity.users.begin_totp_change(_user_id(request))
    qr = segno.make(uri, error="m").svg_data_uri(scale=4)
    return fragment("account_totp.html", qr=qr, uri=uri)


@post("/account/totp/confirm", opt=WRITE, include_in_schema=False, status_code=200)
async def totp_confirm(request: Request) -> Template:
    form = await request.form()
    code = str(form.get("code") or "").strip()[:64]
    if not await services_of(request).identity.users.confirm_totp_change(_user_id(request), code):
        return _result("New authenticator", error="That code does not match the new authenticator.",
                       status_code=400)
    await record(request, Tag.MFA_ENROL, target=principal_of(request).id, factor="totp")
    return _result("New authenticator", done="Your new authenticator is active; the old one no longer works.")


@post("/account/recovery-codes", opt=WRITE, include_in_schema=False, status_code=200)
async def recovery_codes(request: Request) -> Template:
    form = await request.form()
    refused = await _checks(request, form, "Recovery codes")
    if refused:
        return refused
    codes = await services_of(request).identity.users.regenerate_recovery_codes(_user_id(request))
    await record(request, Tag.RECOVERY_REGENERATE, target=principal_of(request).id)
    return _result("Recovery codes", codes=codes,
                   done="Each code works once. Keep them offline; they are not shown again.")


@post("/account/keys/{credential_id:str}/remove", opt=WRITE, include_in_schema=False, status_code=200)
async def remove_key(request: Request, credential_id: str) -> Template:
    form = await request.form()
    refused = await _checks(request, form, "Security key")
    if refused:
        return refused
    if not await services_of(request).identity.webauthn.remove(_user_id(request), credential_id[:64]):
        return _result("Security key", error="No such security key.", status_code=404)
    await record(request, Tag.MFA_REMOVE, target=principal_of(request).id, factor="webauthn",
                 credential=credential_id[:64])
    return _result("Security key", done="The security key was removed.")


ROUTES = [account, totp_begin, totp_confirm, recovery_codes, remove_key]
