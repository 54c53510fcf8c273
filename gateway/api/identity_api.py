"""Identity routes: the OAuth2 token endpoint, JWKS and issuer metadata (public), a person's login steps
(public: password, then one second factor), and self-service under ``/auth`` (session, step-up, logout, MFA).

Login messages are the same for every failure, so they never say whether an account exists.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import Parameter

from gateway.api.deps import ServicesDep
from gateway.api.guard import principal_of
from gateway.audit.events import AuditEvent, Tag
from gateway.authn import totp
from gateway.authn.passwords import verify_password
from gateway.authn.principal import Principal
from gateway.authn.sessions import LOGIN_COOKIE, SESSION_COOKIE, NewSession, clear_cookie, session_cookie
from gateway.authn.stepup import require_fresh_mfa
from gateway.authn.users import LoginFailed, user_view
from gateway.authn.webauthn_factor import WebAuthnFailed
from gateway.authz.actions import Action
from gateway.errors import ApiError, BadRequest, Unauthenticated
from gateway.middleware import request_id_of

PUBLIC = {"action": Action.PUBLIC}
TAGS = ["identity"]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    password: Password


class CodeBody(msgspec.Struct, forbid_unknown_fields=True):
    code: Code


class StepUpBody(msgspec.Struct, forbid_unknown_fields=True):
    code: Code | None = None
    recovery_code: Code | None = None


class PasswordBody(msgspec.Struct, forbid_unknown_fields=True):
    password: Password


class WebAuthnBody(msgspec.Struct, forbid_unknown_fields=True):
    credential: dict[str, Any]


class WebAuthnRegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    credential: dict[str, Any]
    password: Password
    name: Annotated[str, msgspec.Meta(max_length=200)] = "security key"


def _ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def audit(
    services: ServicesDep,
    request: Request,
    tag: str,
    *,
    actor: str | None = None,
    target: str | None = None,
    decision: str | None = None,
    **details: Any,
) -> None:
    await services.audit.record(
        AuditEvent(
            tag,
            actor=actor,
            target=target,
            decision=decision,
            request_id=request_id_of(request.scope),
            details={"client_ip": _ip(request), **details},
        )
    )


# --- OAuth2 / JWKS / metadata ---------------------------------------------------------------------------------
_OAUTH_ERRORS = {
    "invalid_client": (401, "authentication_error", "client authentication failed"),
    "invalid_request": (400, "invalid_request_error", "malformed token request"),
    "unsupported_grant_type": (
        400,
        "invalid_request_error",
        "only grant_type=client_credentials is supported",
    ),
    "unauthorized_client": (400, "invalid_request_error", "the client may not use this grant type"),
    "invalid_scope": (400, "invalid_request_error", "invalid scope"),
    "insecure_transport": (400, "invalid_request_error", "https is required"),
}


@post("/oauth/token", opt=PUBLIC, operation_id="oauthToken", tags=TAGS, status_code=200)
async def oauth_token(request: Request, services: ServicesDep) -> Response[dict[str, Any]]:
    """Client-credentials grant (RFC 6749 §4.4): client_secret_basic or client_secret_post."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise BadRequest("the token request must be application/x-www-form-urlencoded")
    result = await services.identity.token_endpoint.issue(str(request.url), request.headers, await request.body())
    if result.status == 200 and result.client is not None and result.claims is not None:
        await audit(
            services,
            request,
            Tag.TOKEN_ISSUE,
            actor=f"client:{result.client.client_id}",
            decision="allow",
            target=result.client.client_id,
            jti=result.claims["jti"],
            exp=result.claims["exp"],
            scope=result.claims.get("scope"),
        )
        await services.identity.clients.touch(result.client.id)
        return Response(result.body, headers=NO_STORE)
    code = str(result.body.get("error") or "invalid_request")
    status, etype, message = _OAUTH_ERRORS.get(code, (400, "invalid_request_error", "token request refused"))
    await audit(services, request, Tag.TOKEN_DENY, decision="deny", error=code)
    headers = {"WWW-Authenticate": 'Basic realm="palisade"', **NO_STORE} if status == 401 else NO_STORE
    raise ApiError(message, status_code=status, error_type=etype, code=code, headers=headers)


@get("/.well-known/jwks.json", opt=PUBLIC, operation_id="jwks", tags=TAGS)
async def jwks(request: Request, services: ServicesDep) -> Response[dict[str, Any]]:
    return Response(await services.identity.signing.jwks(), headers={"Cache-Control": "public, max-age=60"})


@get("/.well-known/openid-configuration", opt=PUBLIC, operation_id="openidConfiguration", tags=TAGS)
async def openid_configuration(request: Request, services: ServicesDep) -> dict[str, Any]:
    return services.identity.metadata()


# --- login: password, then one second factor ------------------------------------------------------------------
def _failed() -> Unauthenticated:
    return Unauthenticated(LoginFailed.MESSAGE)


async def _login_failure(services: ServicesDep, request: Request, reason: str, user_id: str | None) -> Unauthenticated:
    await services.identity.throttle.fail(_ip(request))
    await audit(
        services,
        request,
        Tag.LOGIN_FAILURE,
        actor=f"user:{user_id}" if user_id else None,
        decision="deny",
        reason=reason,
    )
    return _failed()


@post("/auth/login", opt=PUBLIC, operation_id="login", tags=TAGS, status_code=200)
async def login(request: Request, services: ServicesDep, data: LoginBody) -> Response[dict[str, Any]]:
    """Step 1: the password. On success a short pending session waits for the second factor."""
    ident = services.identity
    await ident.throttle.wait(_ip(request))
    try:
        user = await ident.users.check_password(data.username, data.password)
    except LoginFailed as exc:
        raise await _login_failure(services, request, str(exc), exc.user_id) from None
    pending = await ident.sessions.create(user.id, stage="mfa", client_ip=_ip(request))
    methods = ["totp", "recovery"]
    if await ident.users.webauthn_credentials(user.id):
        methods.append("webauthn")
    await audit(services, request, Tag.LOGIN_PASSWORD, actor=f"user:{user.id}", decision="allow")
    return Response(
        {"mfa_required": True, "methods": methods},
        headers=NO_STORE,
        cookies=[session_cookie(LOGIN_COOKIE, pending.token, 300)],
    )


async def _pending(services: ServicesDep, request: Request) -> Any:
    row = await services.identity.sessions.get(request.cookies.get(LOGIN_COOKIE), stage="mfa")
    if row is None:
        raise Unauthenticated("no login in progress; POST /auth/login first")
    return row


async def _complete(services: ServicesDep, request: Request, pending: Any, method: str) -> Response[dict[str, Any]]:
    ident = services.identity
    new: NewSession = await ident.sessions.promote(pending, method)
    await audit(services, request, Tag.LOGIN_SUCCESS, actor=f"user:{pending.user_id}", decision="allow", mfa=method)
    user = await ident.users.get(pending.user_id)
    return Response(
        {"csrf_token": new.csrf, "user": user_view(user), "idle_timeout_s": ident.settings.session_idle_s},
        headers=NO_STORE,
        cookies=[
            session_cookie(SESSION_COOKIE, new.token, ident.settings.session_absolute_s),
            clear_cookie(LOGIN_COOKIE),
        ],
    )


@post("/auth/login/totp", opt=PUBLIC, operation_id="loginTotp", tags=TAGS, status_code=200)
async def login_totp(request: Request, services: ServicesDep, data: CodeBody) -> Response[dict[str, Any]]:
    pending = await _pending(services, request)
    if not await services.identity.users.verify_totp(pending.user_id, data.code):
        raise await _login_failure(services, request, "wrong or reused TOTP code", pending.user_id)
    return await _complete(services, request, pending, "totp")


@post("/auth/login/recovery", opt=PUBLIC, operation_id="loginRecovery", tags=TAGS, status_code=200)
async def login_recovery(request: Request, services: ServicesDep, data: CodeBody) -> Response[dict[str, Any]]:
    pending = await _pending(services, request)
    if not await services.identity.users.use_recovery_code(pending.user_id, data.code):
        raise await _login_failure(services, request, "wrong or used recovery code", pending.user_id)
    return await _complete(services, request, pending, "recovery")


@post(
    "/auth/login/webauthn/options",
    opt=PUBLIC,
    operation_id="loginWebauthnOptions",
    tags=TAGS,
    status_code=200,
)
async def login_webauthn_options(request: Request, services: ServicesDep) -> dict[str, Any]:
    pending = await _pending(services, request)
    ident = services.identity
    out = await ident.webauthn.authentication_options(pending.user_id)
    if out is None:
        raise BadRequest("no security key is registered for this account")
    options, challenge = out
    await ident.sessions.set_challenge(pending.id, challenge)
    return options


@post("/auth/login/webauthn", opt=PUBLIC, operation_id="loginWebauthn", tags=TAGS, status_code=200)
async def login_webauthn(request: Request, services: ServicesDep, data: WebAuthnBody) -> Response[dict[str, Any]]:
    pending = await _pending(services, request)
    ident = services.identity
    challenge = await ident.sessions.take_challenge(pending.id)
    if challenge is None or not await ident.users.usable(pending.user_id):
        raise await _login_failure(services, request, "no webauthn challenge or unusable account", pending.user_id)
    try:
        await ident.webauthn.authenticate(pending.user_id, data.credential, challenge)
    except WebAuthnFailed as exc:
        await ident.users.record_failure(pending.user_id)
        raise await _login_failure(services, request, f"webauthn: {exc}", pending.user_id) from None
    return await _complete(services, request, pending, "webauthn")


# --- self-service: session, step-up, logout, MFA changes -------------------------------------------------------
def _session_user(services: ServicesDep, request: Request) -> tuple[Principal, str, str]:
    """The person and session behind a cookie-authenticated request."""
    principal = principal_of(request)
    session_id = request.scope.get("state", {}).get("session_id")
    if principal.kind != "user" or principal.auth_method != "session" or not session_id:
        raise BadRequest("this needs a console session (log in at /auth/login)")
    return principal, principal.id.removeprefix("user:"), session_id


@get("/auth/session", opt={"action": Action.SELF_READ}, operation_id="whoami", tags=TAGS)
async def whoami(request: Request, services: ServicesDep) -> dict[str, Any]:
    p = principal_of(request)
    return {
        "id": p.id,
        "kind": p.kind,
        "name": p.name,
        "roles": list(p.roles),
        "attributes": p.attributes,
        "auth_method": p.auth_method,
        "mfa_at": p.mfa_at.isoformat() if p.mfa_at else None,
        "models": list(p.models),
    }


@post("/auth/step-up", opt={"action": Action.SELF_WRITE}, operation_id="stepUp", tags=TAGS, status_code=200)
async def step_up(request: Request, services: ServicesDep, data: StepUpBody) -> dict[str, Any]:
    """Refresh the session's MFA time with a TOTP or recovery code (WebAuthn: /auth/step-up/webauthn)."""
    principal, user_id, session_id = _session_user(services, request)
    ident = services.identity
    if data.code is not None:
        ok, method = await ident.users.verify_totp(user_id, data.code), "totp"
    elif data.recovery_code is not None:
        ok, method = await ident.users.use_recovery_code(user_id, data.recovery_code), "recovery"
    else:
        raise BadRequest("give code or recovery_code")
    if not ok:
        await audit(
            services, request, Tag.LOGIN_FAILURE, actor=principal.id, decision="deny", reason=f"step-up {method}"
        )
        raise Unauthenticated(LoginFailed.MESSAGE)
    await ident.sessions.mark_mfa(session_id, method)
    await audit(services, request, Tag.STEP_UP, actor=principal.id, decision="allow", mfa=method)
    return {"mfa": "fresh", "method": method}


@post(
    "/auth/step-up/webauthn/options",
    opt={"action": Action.SELF_WRITE},
    operation_id="stepUpWebauthnOptions",
    tags=TAGS,
    status_code=200,
)
async def step_up_webauthn_options(request: Request, services: ServicesDep) -> dict[str, Any]:
    _, user_id, session_id = _session_user(services, request)
    ident = services.identity
    out = await ident.webauthn.authentication_options(user_id)
    if out is None:
        raise BadRequest("no security key is registered for this account")
    await ident.sessions.set_challenge(session_id, out[1])
    return out[0]


@post(
    "/auth/step-up/webauthn",
    opt={"action": Action.SELF_WRITE},
    operation_id="stepUpWebauthn",
    tags=TAGS,
    status_code=200,
)
async def step_up_webauthn(request: Request, services: ServicesDep, data: WebAuthnBody) -> dict[str, Any]:
    principal, user_id, session_id = _session_user(services, request)
    ident = services.identity
    challenge = await ident.sessions.take_challenge(session_id)
    try:
        if challenge is None:
            raise WebAuthnFailed("no challenge")
        await ident.webauthn.authenticate(user_id, data.credential, challenge)
    except WebAuthnFailed as exc:
        await ident.users.record_failure(user_id)
        await audit(services, request, Tag.LOGIN_FAILURE, actor=principal.id, decision="deny", reason=f"step-up {exc}")
        raise Unauthenticated(LoginFailed.MESSAGE) from None
    await ident.sessions.mark_mfa(session_id, "webauthn")
    await audit(services, request, Tag.STEP_UP, actor=principal.id, decision="allow", mfa="webauthn")
    return {"mfa": "fresh", "method": "webauthn"}


@post("/auth/logout", opt={"action": Action.SELF_WRITE}, operation_id="logout", tags=TAGS, status_code=200)
async def logout(request: Request, services: ServicesDep) -> Response[dict[str, Any]]:
    principal, _, session_id = _session_user(services, request)
    await services.identity.sessions.end(session_id)
    await audit(services, request, Tag.LOGOUT, actor=principal.id)
    return Response({"logged_out": 1}, cookies=[clear_cookie(SESSION_COOKIE)])


@post(
    "/auth/logout-everywhere",
    opt={"action": Action.SELF_WRITE},
    operation_id="logoutEverywhere",
    tags=TAGS,
    status_code=200,
)
async def logout_everywhere(request: Request, services: ServicesDep) -> Response[dict[str, Any]]:
    principal, user_id, _ = _session_user(services, request)
    ended = await services.identity.sessions.end_all(user_id)
    await audit(services, request, Tag.LOGOUT_ALL, actor=principal.id, sessions=ended)
    return Response({"logged_out": ended}, cookies=[clear_cookie(SESSION_COOKIE)])


async def _reauth(services: ServicesDep, request: Request, user_id: str, password: str) -> None:
    """Changing a factor needs the password again (on top of a fresh MFA check)."""
    user = await services.identity.users.get(user_id)
    if user is None or not verify_password(user.password_hash, password):
        await services.identity.users.record_failure(user_id)
        await audit(services, request, Tag.LOGIN_FAILURE, actor=f"user:{user_id}", decision="deny", reason="re-auth")
        raise Unauthenticated(LoginFailed.MESSAGE)


MFA_CHANGE = {"action": Action.SELF_WRITE}


@post(
    "/auth/mfa/totp",
    opt=MFA_CHANGE,
    guards=[require_fresh_mfa],
    operation_id="totpChangeBegin",
    tags=TAGS,
    status_code=200,
)
async def totp_change_begin(request: Request, services: ServicesDep, data: PasswordBody) -> Response[dict[str, Any]]:
    """A new TOTP seed (otpauth URI + QR code); it replaces the old one once a code from it is confirmed."""
    principal, user_id, _ = _session_user(services, request)
    await _reauth(services, request, user_id, data.password)
    uri = await services.identity.users.begin_totp_change(user_id)
    return Response({"otpauth_uri": uri, "qr_svg": totp.qr_svg(uri)}, headers=NO_STORE)


@post(
    "/auth/mfa/totp/confirm",
    opt=MFA_CHANGE,
    guards=[require_fresh_mfa],
    operation_id="totpChangeConfirm",
    tags=TAGS,
    status_code=200,
)
async def totp_change_confirm(request: Request, services: ServicesDep, data: CodeBody) -> dict[str, Any]:
    principal, user_id, _ = _session_user(services, request)
    if not await services.identity.users.confirm_totp_change(user_id, data.code):
        raise BadRequest("the code does not match the new authenticator (or no change is pending)")
    await audit(services, request, Tag.MFA_ENROL, actor=principal.id, target=principal.id, factor="totp")
    return {"enrolled": "totp"}


@post(
    "/auth/mfa/recovery-codes",
    opt=MFA_CHANGE,
    guards=[require_fresh_mfa],
    operation_id="recoveryCodes",
    tags=TAGS,
    status_code=200,
)
async def recovery_codes(request: Request, services: ServicesDep, data: PasswordBody) -> Response[dict[str, Any]]:
    principal, user_id, _ = _session_user(services, request)
    await _reauth(services, request, user_id, data.password)
    codes = await services.identity.users.regenerate_recovery_codes(user_id)
    await audit(services, request, Tag.RECOVERY_REGENERATE, actor=principal.id, target=principal.id)
    return Response({"recovery_codes": codes}, headers=NO_STORE)


@post(
    "/auth/mfa/webauthn/options",
    opt=MFA_CHANGE,
    guards=[require_fresh_mfa],
    operation_id="webauthnRegisterOptions",
    tags=TAGS,
    status_code=200,
)
async def webauthn_register_options(request: Request, services: ServicesDep) -> dict[str, Any]:
    _, user_id, session_id = _session_user(services, request)
    ident = services.identity
    user = await ident.users.get(user_id)
    options, challenge = await ident.webauthn.registration_options(user)
    await ident.sessions.set_challenge(session_id, challenge)
    return options


@post(
    "/auth/mfa/webauthn",
    opt=MFA_CHANGE,
    guards=[require_fresh_mfa],
    operation_id="webauthnRegister",
    tags=TAGS,
    status_code=201,
)
async def webauthn_register(request: Request, services: ServicesDep, data: WebAuthnRegisterBody) -> dict[str, Any]:
    principal, user_id, session_id = _session_user(services, request)
    await _reauth(services, request, user_id, data.password)
    ident = services.identity
    challenge = await ident.sessions.take_challenge(session_id)
    if challenge is None:
        raise BadRequest("no registration in progress; POST /auth/mfa/webauthn/options first")
    try:
        row = await ident.webauthn.register(user_id, data.credential, challenge, data.name)
    except WebAuthnFailed as exc:
        raise BadRequest(f"the security key's response did not verify ({exc})") from None
    await audit(
        services, request, Tag.MFA_ENROL, actor=principal.id, target=principal.id, factor="webauthn", credential=row.id
    )
    return {"id": row.id, "name": row.name}


@post(
    "/auth/mfa/webauthn/{credential_id:str}/remove",
    opt=MFA_CHANGE,
    guards=[require_fresh_mfa],
    operation_id="webauthnRemove",
    tags=TAGS,
    status_code=200,
)
async def webauthn_remove(
    request: Request, services: ServicesDep, data: PasswordBody, credential_id: Annotated[str, Parameter(max_length=64)]
) -> dict[str, Any]:
    principal, user_id, _ = _session_user(services, request)
    await _reauth(services, request, user_id, data.password)
    if not await services.identity.webauthn.remove(user_id, credential_id):
        raise ApiError("no such security key", status_code=404, error_type="not_found_error")
    await audit(
        services,
        request,
        Tag.MFA_REMOVE,
        actor=principal.id,
        target=principal.id,
        factor="webauthn",
        credential=credential_id,
    )
    return {"removed": credential_id}


IDENTITY_ROUTES = [
    oauth_token,
    jwks,
    openid_configuration,
    login,
    login_totp,
    login_recovery,
    login_webauthn_options,
    login_webauthn,
    whoami,
    step_up,
    step_up_webauthn_options,
    step_up_webauthn,
    logout,
    logout_everywhere,
    totp_change_begin,
    totp_change_confirm,
    recovery_codes,
    webauthn_register_options,
    webauthn_register,
    webauthn_remove,
]
