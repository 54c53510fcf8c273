"""JWT attack cases (RFC 8725) against the gateway's verifier, with tokens built by real JOSE libraries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from authlib.jose import JsonWebSignature
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from gateway.authn.identity import client_principal
from gateway.authn.jwt_verify import JwtVerifier, TokenRejected

ISS = "https://gw.example"
AUD = "palisade"

SERVER_KEY = ECKey.generate_key("P-256", private=True)
KID = SERVER_KEY.thumbprint()
PUBLIC = ECKey.import_key(SERVER_KEY.as_dict(private=False))
ATTACKER = ECKey.generate_key("P-256", private=True)


async def lookup(kid: str):
    return {KID: PUBLIC}.get(kid)


def verifier() -> JwtVerifier:
    return JwtVerifier(
        issuer=ISS,
        audience=AUD,
        algorithms=frozenset({"ES256"}),
        key_lookup=lookup,
        to_principal=client_principal,
    )


def claims(**over):
    now = int(time.time())
    base = {
        "iss": ISS,
        "sub": "pcl_0123456789abcdef",
        "aud": AUD,
        "client_id": "pcl_0123456789abcdef",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "j1",
        "roles": ["app"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict, *, key=SERVER_KEY, alg: str = "ES256", **header) -> str:
    head = {k: v for k, v in {"alg": alg, "kid": KID, "typ": "at+jwt", **header}.items() if v is not None}
    return jwt.encode(head, payload, key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def rejected(token: str) -> str:
    with pytest.raises(TokenRejected) as info:
        await verifier().verify(token)
    assert await verifier()(token) is None  # the TokenVerifier face: None, never an exception
    return str(info.value)


async def test_valid_token_gives_the_client_principal():
    p = await verifier()(sign(claims()))
    assert p is not None and p.id == "client:pcl_0123456789abcdef" and p.kind == "app"
    assert p.auth_method == "jwt" and p.roles == ("app",)


async def test_alg_none_is_refused():
    jws = JsonWebSignature(algorithms=["none"])  # authlib builds it only when asked explicitly
    token = jws.serialize_compact({"alg": "none", "kid": KID, "typ": "at+jwt"}, json.dumps(claims()), None)
    token = token.decode() if isinstance(token, bytes) else token
    assert "algorithm not allowed" in await rejected(token)
    # also with an empty signature segment hand-made
    raw = (
        f"{b64(json.dumps({'alg': 'none', 'typ': 'at+jwt', 'kid': KID}).encode())}."
        f"{b64(json.dumps(claims()).encode())}."
    )
    assert "algorithm not allowed" in await rejected(raw)


async def test_public_key_as_hmac_secret_is_refused():
    """Key confusion: HS256 with the server's public key (PEM and JWK JSON) as the shared secret."""
    for secret in (PUBLIC.as_pem(), json.dumps(PUBLIC.as_dict()).encode()):
        head = b64(json.dumps({"alg": "HS256", "kid": KID, "typ": "at+jwt"}).encode())
        body = b64(json.dumps(claims()).encode())
        sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
        assert "algorithm not allowed" in await rejected(f"{head}.{body}.{sig}")


def test_verifier_refuses_to_be_configured_with_hmac():
    with pytest.raises(ValueError):
        JwtVerifier(
            issuer=ISS,
            audience=AUD,
            algorithms=frozenset({"ES256", "HS256"}),
            key_lookup=lookup,
            to_principal=client_principal,
        )


async def test_embedded_jwk_is_refused():
    attacker_pub = {**ATTACKER.as_dict(private=False)}
    for kid in (KID, ATTACKER.thumbprint()):
        token = sign(claims(), key=ATTACKER, jwk=attacker_pub, kid=kid)
        assert "forbidden header" in await rejected(token)


async def test_jku_and_x5u_pointing_elsewhere_are_refused():
    token = sign(claims(), key=ATTACKER, jku="https://attacker.example/jwks.json", kid=ATTACKER.thumbprint())
    assert "forbidden header" in await rejected(token)
    token = sign(claims(), key=ATTACKER, x5u="https://attacker.example/cert.pem", kid=ATTACKER.thumbprint())
    assert "forbidden header" in await rejected(token)


async def test_attacker_signature_under_our_kid_fails_verification():
    assert await verifier()(sign(claims(), key=ATTACKER)) is None


async def test_expired_and_not_yet_valid_are_refused():
    now = int(time.time())
    await rejected(sign(claims(exp=now - 120, iat=now - 400, nbf=now - 400)))
    await rejected(sign(claims(nbf=now + 3600)))
    await rejected(sign(claims(exp=None)))  # exp is essential


async def test_wrong_issuer_and_audience_are_refused():
    await rejected(sign(claims(iss="https://gw.example.evil")))
    await rejected(sign(claims(iss=ISS + "/")))  # exact match only
    await rejected(sign(claims(aud="another-api")))
    await rejected(sign(claims(aud=None)))
    assert await verifier()(sign(claims(aud=["another-api", AUD]))) is not None  # aud may be a list


async def test_id_token_is_not_an_access_token():
    assert "typ" in await rejected(sign(claims(nonce="n-0S6_WzA2Mj"), typ="JWT"))
    await rejected(sign(claims(), typ=None))  # our tokens always say at+jwt
    assert "ID token" in await rejected(sign(claims(nonce="n-0S6_WzA2Mj", at_hash="x")))


async def test_unknown_kid_and_other_key_types_are_refused():
    assert "unknown kid" in await rejected(sign(claims(), key=ATTACKER, kid=ATTACKER.thumbprint()))
    rsa = RSAKey.generate_key(2048, private=True)
    token = jwt.encode({"alg": "RS256", "kid": KID, "typ": "at+jwt"}, claims(), rsa, algorithms=["RS256"])
    assert "algorithm not allowed" in await rejected(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a",
        "a.b",
        "a.b.c",
        "....",
        "x" * 9000,
        "eyJhbGciOiJFUzI1NiJ9.e30.",
        "bm90IGpzb24.e30.c2ln",
        b64(b"[1,2]") + ".e30.c2ln",
        b64(json.dumps({"alg": "ES256", "kid": 5, "typ": "at+jwt"}).encode()) + ".e30.x",
        b64(json.dumps({"alg": "ES256", "kid": KID, "typ": "at+jwt"}).encode()) + ".bm90LWpzb24.c2ln",
    ],
)
async def test_malformed_tokens_are_rejected_without_exceptions(token):
    assert await verifier()(token) is None


async def test_claims_that_do_not_map_are_refused():
    assert await verifier()(sign(claims(roles="admin"))) is None  # roles must be a list


async def test_x5c_certificate_chain_header_is_refused():
    """An attacker-supplied certificate chain must never be the key: refused whatever the kid."""
    from tests.integration.test_jwt_http import self_signed_x5c

    for kid in (KID, ATTACKER.thumbprint()):
        token = sign(claims(), key=ATTACKER, x5c=self_signed_x5c(ATTACKER), kid=kid)
        assert "forbidden header ['x5c']" in await rejected(token)


async def test_crit_extensions_are_refused():
    """RFC 7515 4.1.11: a critical extension the verifier does not understand makes the token invalid."""
    from tests.integration.test_jwt_http import es256  # raw JWS: JOSE libraries refuse to write unknown crit

    for crit in (["exp"], ["http://attacker.example/ext"], []):
        header = {"alg": "ES256", "kid": KID, "typ": "at+jwt", "crit": crit, "http://attacker.example/ext": True}
        token = es256(header, claims(), SERVER_KEY.private_key)  # signed by our own key: only crit is wrong
        assert "forbidden header ['crit']" in await rejected(token)
