"""Identity through the real HTTP app (embedded mode, SQLite): tokens, JWKS, rotation, login, MFA, sessions."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from gateway.app import services_of
from gateway.audit.events import Tag
from gateway.authn.signing import rotate_signing_keys
from gateway.db.audit import AuditRecord
from gateway.db.base import utcnow
from gateway.db.identity import User, UserSession
from tests.integration.test_identity_helpers import (
    assert_error_shape,
    gateway_client,
    identity_settings,
    login,
    make_person,
)
from tests.support.fake_upstreams import fake_upstream
from tests.support.server import base_env, cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def upstream():
    with fake_upstream("ok", "openai") as url:
        yield url


@pytest.fixture(scope="module")
async def gw(tmp_path_factory, upstream):
    settings = identity_settings(tmp_path_factory.mktemp("identity"), upstream)
    async with gateway_client(settings) as (client, app):
        yield client, app


@pytest.fixture()
async def fresh(gw):
    """A second client (own cookie jar) on the same app."""
    client, app = gw
    async with httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url)) as other:
        yield other, app


async def new_client(app, **kw):
    return await services_of(app).identity.clients.create(kw.pop("name", "app"), **kw)


async def token_for(client, new) -> str:
    r = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(new.client_id, new.client_secret)
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def header_of(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def audit_tags(app, since_seq: int = 0) -> list[AuditRecord]:
    async with services_of(app).db.session() as s:
        return list(
            (
                await s.execute(
                    select(AuditRecord).where(AuditRecord.seq > since_seq).order_by(AuditRecord.seq)
                )
            ).scalars()
        )


async def last_seq(app) -> int:
    rows = await audit_tags(app)
    return rows[-1].seq if rows else 0


# --- OAuth2 client credentials ------------------------------------------------------------------------------------
async def test_client_credentials_basic_and_post_give_working_jwts(gw):
    client, app = gw
    new = await new_client(app, models=["mock"], attributes={"department": "sales"})
    seq = await last_seq(app)
    r = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(new.client_id, new.client_secret)
    )
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 600
    head = header_of(body["access_token"])
    assert head["alg"] == "ES256" and head["typ"] == "at+jwt" and head["kid"]
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert head["kid"] in {k["kid"] for k in jwks["keys"]}
    assert all("d" not in k for k in jwks["keys"])  # public halves only
    meta = (await client.get("/.well-known/openid-configuration")).json()
    assert meta["issuer"] == "https://testserver.local" and meta["jwks_uri"].endswith(
        "/.well-known/jwks.json"
    )
    assert meta["grant_types_supported"] == ["client_credentials"]

    r = await client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": new.client_id,
            "client_secret": new.client_secret,
        },
    )
    assert r.status_code == 200
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    models = await client.get("/v1/models", headers=auth)
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["mock"]
    chat = await client.post(
        "/v1/chat/completions",
        headers=auth,
        json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 200, chat.text
    who = await client.get("/auth/session", headers=auth)
    assert_error_shape(who, 403)  # apps have no self-service action (the authentication-method table)
    records = await audit_tags(app, seq)
    issued = [r for r in records if r.tag == "authn:token:issue"]
    assert len(issued) == 2 and issued[0].actor == f"client:{new.client_id}"
    assert all(new.client_secret not in r.details and body["access_token"] not in r.details for r in records)


async def test_token_endpoint_refusals_use_the_error_shape(gw):
    client, app = gw
    new = await new_client(app)
    wrong = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(new.client_id, "pcs_wrong")
    )
    unknown = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=("pcl_0000000000000000", "pcs_wrong")
    )
    e1, e2 = assert_error_shape(wrong, 401), assert_error_shape(unknown, 401)
    assert e1["message"] == e2["message"]  # no hint whether the client exists
    assert_error_shape(
        await client.post(
            "/oauth/token", data={"grant_type": "password"}, auth=(new.client_id, new.client_secret)
        ),
        400,
    )
    assert_error_shape(await client.post("/oauth/token", json={"grant_type": "client_credentials"}), 400)
    assert_error_shape(
        await client.post(
            "/oauth/token",
            content=b"\xff\xfe=\x00",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        400,
    )
    assert_error_shape(
        await client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": "x" * 5000, "client_secret": "y"},
        ),
        (400, 401),
    )
    await services_of(app).identity.clients.disable(new.client_id)
    assert_error_shape(
        await client.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=(new.client_id, new.client_secret)
        ),
        401,
    )


async def test_bad_bearer_values_are_401_never_500(gw):
    client, _ = gw
    none_token = (
        "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0."
        + base64.urlsafe_b64encode(b'{"sub":"x","aud":"palisade"}').decode().rstrip("=")
        + "."
    )
    for value in (
        "Bearer " + none_token,
        "Bearer a.b.c",
        "Bearer " + "x" * 9000,
        "Basic Zm9vOmJhcg==",
        "Bearer pal_nothexnothex_" + "a" * 43,
        "Bearer ",
        "Bearer \u00e9t\u00e9.x.y",
    ):
        r = await client.get("/v1/models", headers={"Authorization": value.encode("utf-8")})
        assert_error_shape(r, 401)


async def test_signing_key_rotation_publish_then_sign_then_retire(gw):
    client, app = gw
    ident = services_of(app).identity
    new = await new_client(app)
    old_token = await token_for(client, new)
    published_before = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}

    await rotate_signing_keys(ident.db, ident.sealer)
    await ident.signing.load()
    mid_token = await token_for(client, new)
    assert header_of(mid_token)["kid"] != header_of(old_token)["kid"]
    assert header_of(mid_token)["kid"] in published_before  # it was in JWKS before it signed anything
    for tok in (old_token, mid_token):  # overlap: both verify
        assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {tok}"})).status_code == 200

    await rotate_signing_keys(ident.db, ident.sealer)
    await ident.signing.load()
    jwks = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert header_of(old_token)["kid"] not in jwks
    assert_error_shape(await client.get("/v1/models", headers={"Authorization": f"Bearer {old_token}"}), 401)
    assert (
        await client.get("/v1/models", headers={"Authorization": f"Bearer {mid_token}"})
    ).status_code == 200


# --- people: login, second factors, sessions -----------------------------------------------------------------------
async def test_login_failures_do_not_reveal_whether_an_account_exists(gw):
    client, app = gw
    p = await make_person(app, "viewer")
    wrong = await client.post("/auth/login", json={"username": p.username, "password": "not the password 1"})
    unknown = await client.post(
        "/auth/login", json={"username": "nobody-here", "password": "not the password 1"}
    )
    e1, e2 = assert_error_shape(wrong, 401), assert_error_shape(unknown, 401)
    assert e1["message"] == e2["message"] == "invalid credentials"
    assert_error_shape(await client.post("/auth/login", json={"username": "a" * 5000, "password": "x"}), 400)
    assert_error_shape(await client.post("/auth/login", json={"username": "a", "password": "x" * 5000}), 400)
    assert_error_shape(
        await client.post("/auth/login", content=b"{nope", headers={"content-type": "application/json"}), 400
    )


async def test_password_alone_reaches_nothing_and_session_id_changes_at_login(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    client.cookies.set("__Host-palisade_session", "attacker-chosen-session-id", domain="testserver.local")
    r = await client.post("/auth/login", json={"username": p.username, "password": p.password})
    assert r.status_code == 200 and r.json()["mfa_required"] is True
    pending = r.cookies.get("__Host-palisade_login")
    assert pending and len(pending) >= 22  # ≥ 128 bits
    assert_error_shape(await client.get("/auth/session"), 401)  # a pending login is not a session
    set_cookie = (await client.post("/auth/login/totp", json={"code": p.next_code()})).headers.get_list(
        "set-cookie"
    )
    session_cookie = next(c for c in set_cookie if c.startswith("__Host-palisade_session="))
    value = session_cookie.split(";")[0].split("=", 1)[1]
    assert value not in ("attacker-chosen-session-id", pending)
    flags = session_cookie.lower()
    assert "httponly" in flags and "secure" in flags and "samesite=strict" in flags and "path=/" in flags
    assert (await client.get("/auth/session")).json()["name"] == p.username
    async with services_of(app).db.session() as s:  # only the hash of the cookie is stored
        ids = list((await s.execute(select(UserSession.id).where(UserSession.user_id == p.id))).scalars())
    assert value not in ids and len(ids) == 1


async def test_csrf_token_required_on_unsafe_cookie_requests(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    csrf = await login(client, p)
    assert (await client.get("/auth/session")).status_code == 200  # safe method: no token needed
    e = assert_error_shape(await client.post("/auth/logout"), 403)
    assert e["code"] == "csrf_failed"
    assert_error_shape(await client.post("/auth/logout", headers={"X-CSRF-Token": "wrong"}), 403)
    assert (await client.post("/auth/logout", headers={"X-CSRF-Token": csrf})).status_code == 200
    assert_error_shape(await client.get("/auth/session"), 401)


async def test_totp_code_is_accepted_once(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    code = p.next_code()
    await client.post("/auth/login", json={"username": p.username, "password": p.password})
    assert (await client.post("/auth/login/totp", json={"code": code})).status_code == 200
    await client.post("/auth/login", json={"username": p.username, "password": p.password})
    assert_error_shape(await client.post("/auth/login/totp", json={"code": code}), 401)


async def test_lockout_after_100_consecutive_failures(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    seq = await last_seq(app)
    await client.post("/auth/login", json={"username": p.username, "password": p.password})
    for _ in range(99):
        assert (await client.post("/auth/login/totp", json={"code": "000000"})).status_code == 401
    user = await services_of(app).identity.users.get(p.id)
    assert user.failed_attempts == 99 and user.locked_at is None
    assert (await client.post("/auth/login/totp", json={"code": "000000"})).status_code == 401
    user = await services_of(app).identity.users.get(p.id)
    assert user.failed_attempts == 100 and user.locked_at is not None
    # the right password and the right code no longer help, and the message is the same as ever
    r = await client.post("/auth/login", json={"username": p.username, "password": p.password})
    assert assert_error_shape(r, 401)["message"] == "invalid credentials"
    tags = [r.tag for r in await audit_tags(app, seq)]
    assert tags.count("authn:account:locked") == 1 and tags.count("authn:login:failure") >= 100
    await services_of(app).identity.users.unlock(p.id)
    assert (
        await client.post("/auth/login", json={"username": p.username, "password": p.password})
    ).status_code == 200


async def test_success_resets_the_failure_counter(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    await client.post("/auth/login", json={"username": "x" + p.username, "password": p.password})
    await client.post("/auth/login", json={"username": p.username, "password": "wrong password here"})
    assert (await services_of(app).identity.users.get(p.id)).failed_attempts == 1
    await login(client, p)
    assert (await services_of(app).identity.users.get(p.id)).failed_attempts == 0


async def test_recovery_codes_are_single_use(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    code = p.recovery_codes[0]
    await client.post("/auth/login", json={"username": p.username, "password": p.password})
    assert (await client.post("/auth/login/recovery", json={"code": code.upper()})).status_code == 200
    await client.post("/auth/login", json={"username": p.username, "password": p.password})
    assert_error_shape(await client.post("/auth/login/recovery", json={"code": code}), 401)
    assert (await client.post("/auth/login/recovery", json={"code": p.recovery_codes[1]})).status_code == 200


async def test_step_up_guard_and_admin_api(gw, fresh):
    client, app = fresh
    admin = await make_person(app, "admin")
    csrf = await login(client, admin)
    h = {"X-CSRF-Token": csrf}
    r = await client.post("/admin/keys", json={"name": "svc", "models": ["mock"]}, headers=h)
    assert r.status_code == 201 and r.json()["key"].startswith("pal_")
    async with services_of(app).db.session() as s:  # the session's MFA is now 6 minutes old
        await s.execute(
            update(UserSession)
            .where(UserSession.user_id == admin.id)
            .values(mfa_at=utcnow() - timedelta(minutes=6))
        )
    e = assert_error_shape(await client.post("/admin/keys", json={"name": "svc2"}, headers=h), 403)
    assert e["code"] == "mfa_step_up_required"
    assert_error_shape(await client.post("/auth/step-up", json={"code": "000000"}, headers=h), 401)
    assert (
        await client.post("/auth/step-up", json={"code": admin.next_code()}, headers=h)
    ).status_code == 200
    created = await client.post("/admin/keys", json={"name": "svc2"}, headers=h)
    assert created.status_code == 201
    listed = (await client.get("/admin/keys")).json()
    assert any(k["prefix"] == created.json()["prefix"] for k in listed)
    assert all("key" not in k and "key_hash" not in k for k in listed)
    revoked = await client.post(f"/admin/keys/{created.json()['id']}/revoke", headers=h)
    assert revoked.status_code == 200
    assert_error_shape(
        await client.get("/v1/models", headers={"Authorization": f"Bearer {created.json()['key']}"}), 401
    )
    # BOPLA: a client cannot be given a person's role or unknown fields
    assert_error_shape(
        await client.post("/admin/clients", json={"name": "c", "role": "admin"}, headers=h), 400
    )
    made = await client.post("/admin/clients", json={"name": "c", "department": "ops"}, headers=h)
    assert made.status_code == 201 and made.json()["client_secret"].startswith("pcs_")
    # a person: created with TOTP enrolment + recovery codes, shown once
    person = await client.post(
        "/admin/users",
        json={"username": "newbie", "password": "another good passphrase", "roles": ["viewer"]},
        headers=h,
    )
    assert person.status_code == 201 and person.json()["otpauth_uri"].startswith("otpauth://totp/")
    assert len(person.json()["recovery_codes"]) == 10 and person.json()["qr_svg"].startswith("<svg")
    assert_error_shape(
        await client.post(
            "/admin/users",
            json={"username": "weak", "password": "password123", "roles": ["viewer"]},
            headers=h,
        ),
        400,
    )
    assert_error_shape(
        await client.post(
            "/admin/users",
            json={"username": "x", "password": "another good one!", "roles": ["app"]},
            headers=h,
        ),
        400,
    )


async def test_non_admins_and_apps_cannot_administer(gw, fresh):
    client, app = fresh
    viewer = await make_person(app, "viewer")
    csrf = await login(client, viewer)
    assert_error_shape(
        await client.post("/admin/keys", json={"name": "x"}, headers={"X-CSRF-Token": csrf}), 403
    )
    assert_error_shape(await client.get("/admin/users"), 403)
    new = await new_client(app)
    tok = await token_for(client, new)
    client.cookies.clear()
    for path in ("/admin/keys", "/admin/users", "/admin/clients", "/admin/signing-keys"):
        assert_error_shape(await client.get(path, headers={"Authorization": f"Bearer {tok}"}), 403)


async def test_logout_everywhere_and_disabling_end_all_sessions(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    async with httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url)) as second:
        csrf = await login(client, p)
        await login(second, p)
        assert (await second.get("/auth/session")).status_code == 200
        r = await client.post("/auth/logout-everywhere", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200 and r.json()["logged_out"] == 2
        assert_error_shape(await second.get("/auth/session"), 401)
        assert_error_shape(await client.get("/auth/session"), 401)
    q = await make_person(app, "viewer")
    await login(client, q)
    assert (await client.get("/auth/session")).status_code == 200
    await services_of(app).identity.users.set_disabled(q.id, True)
    assert_error_shape(await client.get("/auth/session"), 401)


async def test_idle_and_absolute_timeouts(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    await login(client, p)
    async with services_of(app).db.session() as s:
        await s.execute(
            update(UserSession)
            .where(UserSession.user_id == p.id)
            .values(last_seen_at=utcnow() - timedelta(minutes=31))
        )
    assert_error_shape(await client.get("/auth/session"), 401)
    await login(client, p)
    async with services_of(app).db.session() as s:
        await s.execute(
            update(UserSession)
            .where(UserSession.user_id == p.id)
            .values(created_at=utcnow() - timedelta(hours=12, minutes=1))
        )
    assert_error_shape(await client.get("/auth/session"), 401)


async def test_changing_mfa_needs_password_and_fresh_mfa(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    h = {"X-CSRF-Token": await login(client, p)}
    assert_error_shape(
        await client.post("/auth/mfa/recovery-codes", json={"password": "wrong one"}, headers=h), 401
    )
    r = await client.post("/auth/mfa/recovery-codes", json={"password": p.password}, headers=h)
    assert r.status_code == 200 and len(r.json()["recovery_codes"]) == 10
    # the new TOTP seed only replaces the old one after a code from it is confirmed
    r = await client.post("/auth/mfa/totp", json={"password": p.password}, headers=h)
    assert r.status_code == 200
    from gateway.authn import totp
    from tests.integration.test_identity_helpers import seed_of

    new_seed = seed_of(r.json()["otpauth_uri"])
    assert_error_shape(await client.post("/auth/mfa/totp/confirm", json={"code": "000000"}, headers=h), 400)
    ok = await client.post("/auth/mfa/totp/confirm", json={"code": totp.code_at(new_seed)}, headers=h)
    assert ok.status_code == 200
    async with services_of(app).db.session() as s:
        user = await s.get(User, p.id)
        assert new_seed.encode() not in user.totp_seed_enc  # encrypted at rest
    async with services_of(app).db.session() as s:
        await s.execute(
            update(UserSession)
            .where(UserSession.user_id == p.id)
            .values(mfa_at=utcnow() - timedelta(minutes=10))
        )
    e = assert_error_shape(
        await client.post("/auth/mfa/recovery-codes", json={"password": p.password}, headers=h), 403
    )
    assert e["code"] == "mfa_step_up_required"


async def test_webauthn_ceremony_plumbing(gw, fresh):
    client, app = fresh
    p = await make_person(app, "viewer")
    h = {"X-CSRF-Token": await login(client, p)}
    r = await client.post("/auth/mfa/webauthn/options", headers=h)
    assert r.status_code == 200
    opts = r.json()
    assert opts["rp"]["id"] == "testserver.local" and len(opts["challenge"]) >= 22
    assert opts["user"]["name"] == p.username
    bad = {
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {"clientDataJSON": "e30", "attestationObject": "oA"},
    }
    e = assert_error_shape(
        await client.post("/auth/mfa/webauthn", json={"credential": bad, "password": p.password}, headers=h),
        400,
    )
    assert "did not verify" in e["message"]
    # the challenge was consumed: a retry needs new options
    assert_error_shape(
        await client.post("/auth/mfa/webauthn", json={"credential": bad, "password": p.password}, headers=h),
        400,
    )
    # at login, a person without a security key is told so; a forged assertion is refused
    async with httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url)) as other:
        await other.post("/auth/login", json={"username": p.username, "password": p.password})
        assert_error_shape(await other.post("/auth/login/webauthn/options"), 400)
        assert_error_shape(await other.post("/auth/login/webauthn", json={"credential": bad}), 401)


async def test_concurrent_logins_against_sqlite_do_not_500(gw):
    client, app = gw
    people = [await make_person(app, "viewer") for _ in range(3)]
    rs = await asyncio.gather(
        *[client.post("/auth/login", json={"username": q.username, "password": "wrong pass"}) for q in people]
    )
    assert all(r.status_code == 401 for r in rs)


# --- ending a client's tokens, and what inference audit records say about authentication --------------------------
def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_of(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def test_disabling_or_deleting_a_client_ends_its_issued_tokens_at_once(gw, fresh):
    client, app = fresh
    h = {"X-CSRF-Token": await login(client, await make_person(app, "admin"))}
    made = [await new_client(app, name=f"ending-{i}", models=["mock"]) for i in range(4)]
    tokens = [await token_for(client, m) for m in made]
    for token in tokens:  # twice each: the second answer comes from the verified-client cache
        for _ in range(2):
            assert (await client.get("/v1/models", headers=bearer(token))).status_code == 200

    # the admin API: the already-issued token is refused on the very next request, and no new one is issued
    assert (await client.post(f"/admin/clients/{made[0].client_id}/disable", headers=h)).status_code == 200
    assert_error_shape(await client.get("/v1/models", headers=bearer(tokens[0])), 401)
    r = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(made[0].client_id, made[0].client_secret)
    )
    assert_error_shape(r, 401)
    assert (await client.get("/v1/models", headers=bearer(tokens[3]))).status_code == 200  # others unaffected

    # the CLI, another process: only the revocation marker file reaches this one (embedded mode, no Redis)
    settings = services_of(app).identity.settings
    env = base_env(
        settings.data_dir, PALISADE_DATABASE_URL=settings.database_url, PALISADE_MODELS_FILE=str(settings.models_file)
    )
    await asyncio.to_thread(cli, env, "clients", "disable", made[1].client_id)
    assert_error_shape(await client.get("/v1/models", headers=bearer(tokens[1])), 401)

    # deleting, through the API and through the CLI
    assert (await client.delete(f"/admin/clients/{made[2].client_id}", headers=h)).json() == {
        "deleted": made[2].client_id
    }
    assert_error_shape(await client.get("/v1/models", headers=bearer(tokens[2])), 401)
    assert_error_shape(await client.delete(f"/admin/clients/{made[2].client_id}", headers=h), 404)
    await asyncio.to_thread(cli, env, "clients", "delete", made[3].client_id)
    assert_error_shape(await client.get("/v1/models", headers=bearer(tokens[3])), 401)

    listed = {c["client_id"]: c for c in (await client.get("/admin/clients", headers=h)).json()}
    assert listed[made[0].client_id]["disabled"] and listed[made[1].client_id]["disabled"]
    assert made[2].client_id not in listed and made[3].client_id not in listed
    tags = [(r.tag, r.target) for r in await audit_tags(app)]
    assert (Tag.CLIENT_DELETE, made[2].client_id) in tags and (Tag.CLIENT_DELETE, made[3].client_id) in tags


async def test_inference_audit_records_name_how_each_request_authenticated(gw):
    client, app = gw
    token = await token_for(client, await new_client(app, name="audited", models=["mock"]))
    key = await services_of(app).keys.create("audited-key", models=["mock"])
    seq = await last_seq(app)
    request_ids = []
    for credential in (token, key.key):
        r = await client.post(
            "/v1/chat/completions",
            headers=bearer(credential),
            json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200, r.text
        request_ids.append(r.headers["x-request-id"])
    await services_of(app).audit.flush()  # each completion record is appended after its answer left
    records = await audit_tags(app, seq)
    # the request's two records (who asked, then how it ended), and the authentication folded into both, not a
    # record of its own
    assert [(r.request_id, r.tag) for r in records] == [
        (rid, tag) for rid in request_ids for tag in (Tag.INFERENCE_ACCEPTED, Tag.INFERENCE)
    ]
    details = [json.loads(r.details) for r in records]
    assert [(d["auth_method"], d["auth_id"]) for d in details] == [
        ("jwt", claims_of(token)["jti"]), ("jwt", claims_of(token)["jti"]),
        ("api_key", key.id), ("api_key", key.id),
    ]
    assert all(token not in r.details and key.key not in r.details for r in records)
