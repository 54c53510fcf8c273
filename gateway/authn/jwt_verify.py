"""Bearer JWT verification (RFC 8725 BCP, RFC 9068 access tokens) for our own tokens and an external IdP's.

The header is read and judged *before* any key is chosen: only the allowed asymmetric algorithms, never ``none``
or HMAC (so a public key can never be used as an HMAC secret), never a key or key URL carried by the token itself
(``jwk``, ``jku``, ``x5u``, ``x5c``), no ``crit`` extensions. ``kid`` is only a lookup key into keys we hold. Then
the signature is checked with that key and the one allowed algorithm, and ``iss`` (exact), ``aud``, ``exp``,
``nbf`` and ``typ`` (an ID token is not an access token) are enforced.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwt import JWTClaimsRegistry

from gateway.authn.principal import Principal

_log = structlog.get_logger("palisade.authn.jwt")

ASYMMETRIC_ALGS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA", "Ed25519"}
)
FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit"})
ACCESS_TYPS = frozenset({"at+jwt", "application/at+jwt"})
LEEWAY_S = 30

KeyLookup = Callable[[str], Awaitable[Any]]
ClaimsToPrincipal = Callable[[dict[str, Any]], Principal]


class TokenRejected(Exception):
    """Why a token was refused (for logs and audit; the client only ever sees a plain 401)."""


def _b64json(part: str) -> Any:
    pad = "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(part + pad))


def read_header(token: str) -> dict[str, Any] | None:
    """The JOSE header of a compact JWS, or None when the value is not shaped like one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    try:
        header = _b64json(parts[0])
    except (ValueError, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) else None


class JwtVerifier:
    """A ``TokenVerifier`` for one issuer: returns the principal, or None for anything not valid."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        algorithms: frozenset[str],
        key_lookup: KeyLookup,
        to_principal: ClaimsToPrincipal,
        require_at_typ: bool = True,
    ) -> None:
        bad = algorithms - ASYMMETRIC_ALGS
        if bad:
            raise ValueError(f"refusing non-asymmetric JWT algorithms {sorted(bad)}")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.key_lookup = key_lookup
        self.to_principal = to_principal
        self.require_at_typ = require_at_typ
        self.claims_registry = JWTClaimsRegistry(
            leeway=LEEWAY_S,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
        )

    async def __call__(self, token: str) -> Principal | None:
        try:
            claims = await self.verify(token)
        except TokenRejected as exc:
            _log.info("jwt rejected", issuer=self.issuer, reason=str(exc))
            return None
        try:
            return self.to_principal(claims)
        except (KeyError, TypeError, ValueError) as exc:
            _log.info("jwt rejected", issuer=self.issuer, reason=f"claims do not map: {type(exc).__name__}")
            return None

    async def verify(self, token: str) -> dict[str, Any]:
        header = read_header(token)
        if header is None:
            raise TokenRejected("not a compact JWS")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenRejected(f"algorithm not allowed: {str(alg)[:20]}")
        carried = FORBIDDEN_HEADERS & header.keys()
        if carried:
            raise TokenRejected(f"token carries forbidden header {sorted(carried)}")
        typ = header.get("typ")
        if self.require_at_typ:
            if not isinstance(typ, str) or typ.lower() not in ACCESS_TYPS:
                raise TokenRejected("typ is not at+jwt")
        elif typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCESS_TYPS | {"jwt"}):
            raise TokenRejected("unexpected typ")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise TokenRejected("missing kid")
        key = await self.key_lookup(kid)
        if key is None:
            raise TokenRejected("unknown kid")
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
            claims = decoded.claims
            self.claims_registry.validate(claims)
        except JoseError as exc:
            raise TokenRejected(f"{type(exc).__name__}") from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise TokenRejected(f"malformed token: {type(exc).__name__}") from exc
        if not isinstance(claims, dict):
            raise TokenRejected("claims are not an object")
        if "nonce" in claims or "at_hash" in claims:
            raise TokenRejected("ID token used as access token")
        return claims


def mfa_time(claims: dict[str, Any]) -> datetime | None:
    """When an IdP says the person used MFA (``amr``), their ``auth_time`` is the MFA time."""
    amr = claims.get("amr")
    if isinstance(amr, list) and {"mfa", "otp", "hwk", "swk"} & {str(a) for a in amr}:
        at = claims.get("auth_time")
        if isinstance(at, int | float):
            return datetime.fromtimestamp(at, UTC)
    return None
