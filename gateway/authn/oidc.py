"""Access tokens from an external OIDC identity provider (issuer, JWKS URL, audience, claim mapping).

The IdP's JWKS is cached; an unknown ``kid`` triggers a refresh, at most once per ``min_refresh_s`` and one at a
time (single flight), so a stream of forged kids cannot turn into a stream of requests to the IdP.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import structlog
from joserfc.jwk import KeySet

from gateway.authn.jwt_verify import ASYMMETRIC_ALGS, JwtVerifier, mfa_time
from gateway.authn.principal import Principal
from gateway.settings import Settings

_log = structlog.get_logger("palisade.authn.oidc")

DEFAULT_CLAIM_MAP = {
    "name": "preferred_username",
    "roles": "roles",
    "department": "department",
    "clearance": "clearance",
}
MAX_KEYS = 50


class RemoteJwks:
    def __init__(self, url: str, *, min_refresh_s: float = 30.0, timeout_s: float = 3.0) -> None:
        self.url = url
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self._keys: dict[str, Any] = {}
        self._fetched_at = -1e9
        self._lock = asyncio.Lock()
        self.fetches = 0  # observable for tests and metrics

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                resp = await client.get(self.url)
                resp.raise_for_status()
                data = resp.json()
            keys = [k for k in data.get("keys", []) if isinstance(k, dict) and k.get("kid")][:MAX_KEYS]
            keys = [k for k in keys if k.get("kty") in ("RSA", "EC", "OKP")]  # never symmetric keys
            keyset = KeySet.import_key_set({"keys": keys})
            self._keys = {k.kid: k for k in keyset.keys if k.kid}
        except (httpx.HTTPError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            _log.warning("idp jwks fetch failed", url=self.url, error=type(exc).__name__)

    async def key(self, kid: str) -> Any:
        key = self._keys.get(kid)
        if key is not None:
            return key
        if time.monotonic() - self._fetched_at < self.min_refresh_s:
            return None
        async with self._lock:
            if kid not in self._keys and time.monotonic() - self._fetched_at >= self.min_refresh_s:
                await self._fetch()
        return self._keys.get(kid)


def oidc_verifier(settings: Settings, jwks: RemoteJwks | None = None) -> JwtVerifier:
    """A verifier for the configured IdP; claims are mapped to principal attributes by PALISADE_OIDC_CLAIM_MAP."""
    assert settings.oidc_issuer and settings.oidc_jwks_url
    mapping = dict(DEFAULT_CLAIM_MAP)
    if settings.oidc_claim_map:
        mapping.update(json.loads(settings.oidc_claim_map))
    jwks = jwks or RemoteJwks(settings.oidc_jwks_url)

    def to_principal(claims: dict[str, Any]) -> Principal:
        def claim(attr: str) -> Any:
            return claims.get(mapping.get(attr, attr))

        roles = claim("roles") or ()
        roles = (roles,) if isinstance(roles, str) else tuple(str(r) for r in roles)
        attrs = {a: claim(a) for a in mapping if a not in ("name", "roles") and claim(a) is not None}
        attrs["issuer"] = settings.oidc_issuer
        return Principal(
            id=f"oidc:{claims['sub']}",
            kind="user",
            name=str(claim("name") or claims["sub"]),
            auth_method="jwt",
            roles=roles,
            attributes=attrs,
            mfa_at=mfa_time(claims),
            key_id=str(claims.get("jti") or "")[:200] or None,  # the token's id, for audit (never the token)
        )

    return JwtVerifier(
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience or settings.token_audience,
        algorithms=ASYMMETRIC_ALGS,
        key_lookup=jwks.key,
        to_principal=to_principal,
        require_at_typ=False,
    )
