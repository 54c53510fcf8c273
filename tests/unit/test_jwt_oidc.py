"""External OIDC IdP tokens: a real HTTP server publishes the IdP's JWKS; refreshes on unknown kid are bounded."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.authn.oidc import RemoteJwks, oidc_verifier
from gateway.settings import Settings
from tests.support.waiting import await_until

IDP = "https://idp.example/realms/corp"


class Idp:
    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, private=True, parameters={"kid": "k1"})]
        self.hits = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                idp.hits += 1
                body = json.dumps({"keys": [k.as_dict(private=False) for k in idp.keys]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, key: RSAKey, **over) -> str:
        now = int(time.time())
        claims = {
            "iss": IDP,
            "sub": "u-42",
            "aud": "palisade-api",
            "exp": now + 300,
            "iat": now,
            "preferred_username": "dana",
            "groups": ["ml_engineer"],
            "dept": "research",
            "amr": ["pwd", "otp"],
            "auth_time": now - 10,
            **over,
        }
        return jwt.encode(
            {"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, claims, key, algorithms=["RS256"]
        )


@pytest.fixture()
def idp():
    server = Idp()
    yield server
    server.server.shutdown()


def settings(idp: Idp) -> Settings:
    return replace(
        Settings(data_dir=Path("/tmp"), database_url="sqlite://"),
        oidc_issuer=IDP,
        oidc_jwks_url=idp.url,
        oidc_audience="palisade-api",
        oidc_claim_map=json.dumps({"roles": "groups", "department": "dept"}),
    )


async def test_idp_token_maps_claims_to_principal(idp):
    verify = oidc_verifier(settings(idp))
    p = await verify(idp.token(idp.keys[0]))
    assert p is not None and p.id == "oidc:u-42" and p.name == "dana" and p.kind == "user"
    assert p.roles == ("ml_engineer",) and p.department == "research" and p.mfa_at is not None
    assert await verify(idp.token(idp.keys[0], aud="other")) is None
    assert await verify(idp.token(idp.keys[0], iss="https://evil.example")) is None
    assert await verify(idp.token(idp.keys[0], nonce="abc")) is None  # an ID token


async def test_unknown_kids_cause_bounded_refreshes_and_rotation_is_picked_up(idp):
    jwks = RemoteJwks(idp.url, min_refresh_s=0.5)
    verify = oidc_verifier(settings(idp), jwks)
    assert await verify(idp.token(idp.keys[0])) is not None
    assert idp.hits == 1
    forged = RSAKey.generate_key(2048, private=True, parameters={"kid": "forged"})
    for _ in range(50):  # a storm of unknown kids: at most one refresh per interval
        assert await verify(idp.token(forged)) is None
    assert idp.hits <= 2
    # the IdP rotates: its new key is fetched on first sight once the interval has passed
    idp.keys.append(RSAKey.generate_key(2048, private=True, parameters={"kid": "k2"}))
    rotated = idp.token(idp.keys[1])
    await await_until(lambda: verify(rotated), timeout=5, interval=0.05, what="the rotated key to be fetched")
    assert idp.hits <= 3  # polling did not cause a refresh per attempt
