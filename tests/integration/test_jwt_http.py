"""Every JWT attack of the unit battery (tests/unit/test_jwt.py), sent over HTTP to the real app as a bearer token.

The tokens are built against the running gateway's own issuer, audience, kid and published key (read from a
genuine token and the JWKS), so each one differs from an accepted token only by the attack. Each must get 401 in
the error shape; the genuine token, as a control, gets 200. Signatures are computed here with ``cryptography``
(raw JWS), so headers a JOSE library would refuse to produce (``crit``, ``x5c``, ``alg: none``) can be sent.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from gateway.app import services_of
from tests.integration.test_identity_helpers import gateway_client, identity_settings
from tests.support.fake_upstreams import fake_upstream

pytestmark = pytest.mark.asyncio(loop_scope="session")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def es256(header: dict, payload: dict, key: ec.EllipticCurvePrivateKey) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def self_signed_x5c(key) -> list[str]:
    """A one-certificate chain for ``key`` (a joserfc ECKey or a cryptography key), base64 DER as in x5c."""
    private = getattr(key, "private_key", key)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "palisade-gateway")])  # claims to be us
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(private, hashes.SHA256()))
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]


def attacks(header: dict, claims: dict, public_pem: bytes) -> dict[str, str]:
    """name -> token, each derived from a genuine token's header and claims."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = {"kty": "EC", "crv": "P-256",
                    "x": b64(attacker.public_key().public_numbers().x.to_bytes(32, "big")),
                    "y": b64(attacker.public_key().public_numbers().y.to_bytes(32, "big"))}
    now = int(time.time())
    body = b64(json.dumps(claims).encode())

    def hs256(secret: bytes) -> str:
        head = b64(json.dumps({**header, "alg": "HS256"}).encode())
        return f"{head}.{body}.{b64(hmac.new(secret, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs_input = f"{b64(json.dumps({**header, 'alg': 'RS256'}).encode())}.{body}"
    rs256 = f"{rs_input}.{b64(rsa_key.sign(rs_input.encode(), padding.PKCS1v15(), hashes.SHA256()))}"
    forged: dict[str, Callable[[], str]] = {
        "alg none": lambda: f"{b64(json.dumps({**header, 'alg': 'none'}).encode())}.{body}.",
        "alg None (case)": lambda: f"{b64(json.dumps({**header, 'alg': 'None'}).encode())}.{body}.",
        "HS256 with our public key (PEM)": lambda: hs256(public_pem),
        "RS256 under our kid": lambda: rs256,
        "embedded jwk": lambda: es256({**header, "jwk": attacker_jwk}, claims, attacker),
        "jku elsewhere": lambda: es256({**header, "jku": "https://attacker.example/jwks.json"}, claims, attacker),
        "x5u elsewhere": lambda: es256({**header, "x5u": "https://attacker.example/c.pem"}, claims, attacker),
        "x5c chain": lambda: es256({**header, "x5c": self_signed_x5c(attacker)}, claims, attacker),
        "crit extension": lambda: es256({**header, "crit": ["http://attacker.example/ext"],
                                         "http://attacker.example/ext": True}, claims, attacker),
        "attacker key under our kid": lambda: es256(header, claims, attacker),
        "unknown kid": lambda: es256({**header, "kid": "attacker-kid"}, claims, attacker),
        "expired": lambda: es256(header, {**claims, "exp": now - 120, "iat": now - 400, "nbf": now - 400},
                                 attacker),
        "typ JWT (an ID token)": lambda: es256({**header, "typ": "JWT"}, {**claims, "nonce": "n"}, attacker),
        "wrong issuer": lambda: es256(header, {**claims, "iss": claims["iss"] + ".evil"}, attacker),
        "wrong audience": lambda: es256(header, {**claims, "aud": "another-api"}, attacker),
        "signature stripped": lambda: es256(header, claims, attacker).rsplit(".", 1)[0] + ".",
        "claims swapped under a genuine signature": lambda: "",  # filled in by the caller
        "malformed": lambda: "a.b.c",
    }
    return {name: make() for name, make in forged.items()}


@pytest.fixture(scope="module")
async def gw(tmp_path_factory):
    with fake_upstream("ok", "openai") as upstream:
        settings = identity_settings(tmp_path_factory.mktemp("jwt-http"), upstream)
        async with gateway_client(settings) as (client, app):
            yield client, app


async def test_every_jwt_attack_is_refused_over_http(gw) -> None:
    client, app = gw
    oauth = await services_of(app).identity.clients.create("jwt-target", models=["mock"])
    r = await client.post("/oauth/token", data={"grant_type": "client_credentials"},
                          auth=(oauth.client_id, oauth.client_secret))
    genuine = r.json()["access_token"]
    head_part, claims_part, sig_part = genuine.split(".")
    header, claims = json.loads(unb64(head_part)), json.loads(unb64(claims_part))
    jwks = (await client.get("/.well-known/jwks.json")).json()["keys"]
    jwk = next(k for k in jwks if k["kid"] == header["kid"])
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(unb64(jwk["x"]), "big"), int.from_bytes(unb64(jwk["y"]),
                                           "big"), ec.SECP256R1()).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    async def status(token: str) -> tuple[int, dict]:
        resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        return resp.status_code, resp.json()

    assert (await status(genuine))[0] == 200  # control: the genuine token works
    tokens = attacks(header, claims, pem)
    elevated = b64(json.dumps({**claims, "roles": ["admin"], "sub": "someone-else"}).encode())
    tokens["claims swapped under a genuine signature"] = f"{head_part}.{elevated}.{sig_part}"
    assert len(tokens) >= 18
    for name, token in tokens.items():
        code, body = await status(token)
        assert code == 401, f"{name}: {code} {body}"
        assert body["error"]["type"] == "authentication_error" and body["error"]["request_id"], (name, body)
