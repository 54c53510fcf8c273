"""WebAuthn end to end through the real HTTP app (embedded mode, SQLite) with a software security key.

Enrolment (fresh MFA + password re-auth), logout, login with password + the security key, step-up with it, and
the refusals that matter: a non-increasing signature counter (cloned key / replay), a replayed assertion, an
assertion for another origin or signed by another key, an attestation for another relying party.
"""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import select

from gateway.app import services_of
from gateway.audit.events import Tag
from gateway.db.audit import AuditRecord
from gateway.db.identity import WebAuthnCredential
from tests.integration.test_identity_helpers import (
    BASE_URL,
    assert_error_shape,
    gateway_client,
    identity_settings,
    login,
    make_person,
)
from tests.support.fake_upstreams import fake_upstream
from tests.support.soft_authenticator import SoftAuthenticator, b64url

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def gw(tmp_path_factory):
    with fake_upstream("ok", "openai") as upstream:
        settings = identity_settings(tmp_path_factory.mktemp("webauthn"), upstream)
        async with gateway_client(settings) as (client, app):
            yield client, app


def new_client(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Another browser (own cookie jar) on the same app."""
    return httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url))


async def enrol(client: httpx.AsyncClient, person, key: SoftAuthenticator) -> dict:
    """Log in with password + TOTP, then register ``key``; returns the registration response body."""
    h = {"X-CSRF-Token": await login(client, person)}
    options = (await client.post("/auth/mfa/webauthn/options", headers=h)).json()
    r = await client.post(
        "/auth/mfa/webauthn",
        json={"credential": key.create(options), "password": person.password, "name": "yubi"},
        headers=h,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def password_step(client: httpx.AsyncClient, person) -> dict:
    r = await client.post("/auth/login", json={"username": person.username, "password": person.password})
    assert r.status_code == 200, r.text
    assert "webauthn" in r.json()["methods"]
    r = await client.post("/auth/login/webauthn/options")
    assert r.status_code == 200, r.text
    return r.json()


async def stored_count(app, credential_id: bytes) -> int:
    async with services_of(app).db.session() as s:
        row = (
            await s.execute(select(WebAuthnCredential).where(WebAuthnCredential.credential_id == b64url(credential_id)))
        ).scalar_one()
    return row.sign_count


async def test_enrol_log_out_and_log_in_with_a_security_key(gw):
    client, app = gw
    person = await make_person(app, "viewer")
    key = SoftAuthenticator(origin=BASE_URL)
    async with new_client(client) as browser:
        h = {"X-CSRF-Token": await login(browser, person)}
        options = (await browser.post("/auth/mfa/webauthn/options", headers=h)).json()
        assert options["rp"]["id"] == "testserver.local"
        assert {"type": "public-key", "alg": -7} in options["pubKeyCredParams"]
        credential = key.create(options)
        # changing a factor needs the password again: a wrong one is refused and enrols nothing
        assert_error_shape(
            await browser.post(
                "/auth/mfa/webauthn", json={"credential": credential, "password": "not it at all"}, headers=h
            ),
            401,
        )
        r = await browser.post(
            "/auth/mfa/webauthn",
            json={"credential": credential, "password": person.password, "name": "yubi"},
            headers=h,
        )
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "yubi"
        # the same key cannot be registered twice (and the next options exclude it)
        options = (await browser.post("/auth/mfa/webauthn/options", headers=h)).json()
        assert [c["id"] for c in options["excludeCredentials"]] == [b64url(key.credential_id)]
        again = SoftAuthenticator(origin=BASE_URL, credential_id=key.credential_id)
        assert_error_shape(
            await browser.post(
                "/auth/mfa/webauthn",
                json={"credential": again.create(options), "password": person.password},
                headers=h,
            ),
            400,
        )
        assert (await browser.post("/auth/logout", headers=h)).status_code == 200
        assert_error_shape(await browser.get("/auth/session"), 401)

        # log in again: password, then the security key as the second factor
        options = await password_step(browser, person)
        assert options["rpId"] == "testserver.local"
        assert [c["id"] for c in options["allowCredentials"]] == [b64url(key.credential_id)]
        r = await browser.post("/auth/login/webauthn", json={"credential": key.get(options)})
        assert r.status_code == 200, r.text
        csrf = r.json()["csrf_token"]
        me = (await browser.get("/auth/session")).json()
        assert me["id"] == f"user:{person.id}" and me["auth_method"] == "session" and me["mfa_at"]
        assert await stored_count(app, key.credential_id) == key.sign_count == 1

        # step-up with the key on the live session
        options = (await browser.post("/auth/step-up/webauthn/options", headers={"X-CSRF-Token": csrf})).json()
        r = await browser.post(
            "/auth/step-up/webauthn", json={"credential": key.get(options)}, headers={"X-CSRF-Token": csrf}
        )
        assert r.status_code == 200 and r.json() == {"mfa": "fresh", "method": "webauthn"}, r.text
        assert await stored_count(app, key.credential_id) == 2

    async with services_of(app).db.session() as s:
        records = list((await s.execute(select(AuditRecord).where(AuditRecord.actor == f"user:{person.id}"))).scalars())
    seen = [(r.tag, json.loads(r.details)) for r in records]
    assert sum(tag == Tag.MFA_ENROL and d.get("factor") == "webauthn" for tag, d in seen) == 1, seen
    assert any(tag == Tag.LOGIN_SUCCESS and d.get("mfa") == "webauthn" for tag, d in seen), seen


async def test_sign_count_replay_and_forged_assertions_are_refused(gw):
    client, app = gw
    person = await make_person(app, "viewer")
    key = SoftAuthenticator(origin=BASE_URL)
    async with new_client(client) as browser:
        await enrol(browser, person, key)
    for _ in range(2):  # the stored counter follows the key: 2
        async with new_client(client) as browser:
            options = await password_step(browser, person)
            assert (
                await browser.post("/auth/login/webauthn", json={"credential": key.get(options)})
            ).status_code == 200
    assert await stored_count(app, key.credential_id) == 2

    async def refused(make_credential) -> dict:
        async with new_client(client) as browser:
            options = await password_step(browser, person)
            r = await browser.post("/auth/login/webauthn", json={"credential": make_credential(options)})
            error = assert_error_shape(r, 401)
            assert_error_shape(await browser.get("/auth/session"), 401)  # no session came of it
            return error

    # a cloned key replaying the current count, or an older one, is refused; so is an assertion over a used
    # challenge, one made for another origin, and one signed by another private key under the same credential id
    for count in (2, 1, 0):
        await refused(lambda options, count=count: key.get(options, counter=count))
    async with new_client(client) as browser:
        old = key.get(await password_step(browser, person))
        assert (await browser.post("/auth/login/webauthn", json={"credential": old})).status_code == 200
    await refused(lambda options: old)
    phish = SoftAuthenticator(origin="https://evil.example", credential_id=key.credential_id, rp_id="testserver.local")
    phish.private_key = key.private_key
    await refused(lambda options: phish.get(options, counter=100))
    clone = SoftAuthenticator(origin=BASE_URL, credential_id=key.credential_id, rp_id="testserver.local")
    await refused(lambda options: clone.get(options, counter=100))
    # none of them moved the counter; the real key goes on working
    assert await stored_count(app, key.credential_id) == key.sign_count == 3
    async with new_client(client) as browser:
        options = await password_step(browser, person)
        assert (await browser.post("/auth/login/webauthn", json={"credential": key.get(options)})).status_code == 200
    assert await stored_count(app, key.credential_id) == 4


async def test_attestation_for_another_relying_party_is_refused(gw):
    client, app = gw
    person = await make_person(app, "viewer")
    async with new_client(client) as browser:
        h = {"X-CSRF-Token": await login(browser, person)}
        options = (await browser.post("/auth/mfa/webauthn/options", headers=h)).json()
        wrong_rp = SoftAuthenticator(origin=BASE_URL).create(options, rp_id="evil.example")
        e = assert_error_shape(
            await browser.post(
                "/auth/mfa/webauthn", json={"credential": wrong_rp, "password": person.password}, headers=h
            ),
            400,
        )
        assert "did not verify" in e["message"]
        options = (await browser.post("/auth/mfa/webauthn/options", headers=h)).json()
        wrong_origin = SoftAuthenticator(origin="https://evil.example").create(options)
        assert_error_shape(
            await browser.post(
                "/auth/mfa/webauthn", json={"credential": wrong_origin, "password": person.password}, headers=h
            ),
            400,
        )
    assert await services_of(app).identity.users.webauthn_credentials(person.id) == []
