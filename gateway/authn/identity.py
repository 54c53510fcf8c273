"""The identity subsystem of one gateway process, built once by the composition root (``gateway.services``).

It hands the ``Authenticator`` its token verifiers (ours, and an external IdP's when configured) and session
resolver; the revocation-aware credential cache it shares with the API key service is built before both.
"""

from __future__ import annotations

from typing import Any

import structlog

from gateway.audit.events import AuditEvent, AuditTrail, Tag
from gateway.authn.apikeys import key_principal
from gateway.authn.authenticator import SessionResolver, TokenVerifier
from gateway.authn.clients import ClientService
from gateway.authn.jwt_verify import JwtVerifier
from gateway.authn.oauth_server import TokenEndpoint
from gateway.authn.principal import Principal
from gateway.authn.revocation import CredentialCache
from gateway.authn.sealing import Sealer
from gateway.authn.sessions import SessionStore
from gateway.authn.signing import ALG, SigningKeys, ensure_signing_keys
from gateway.authn.throttle import IpThrottle
from gateway.authn.users import LOCKOUT_AFTER, UserService
from gateway.authn.webauthn_factor import WebAuthnFactor
from gateway.crypto.keyring import Keyring
from gateway.db.base import utcnow
from gateway.db.identity import User
from gateway.db.keys import ApiKey
from gateway.db.session import Database
from gateway.settings import Settings

_log = structlog.get_logger("palisade.authn.identity")


def issuer_of(settings: Settings) -> str:
    return (settings.issuer or f"http://{settings.host}:{settings.port}").rstrip("/")


def client_principal(claims: dict[str, Any]) -> Principal:
    """A principal from one of our access tokens (claims were written by ``TokenEndpoint``)."""
    attrs = claims.get("attributes") or {}
    roles = claims.get("roles") or ["app"]
    models = claims.get("models") or []
    if not isinstance(attrs, dict) or not isinstance(roles, list) or not isinstance(models, list):
        raise TypeError("bad claim types")
    attrs = {**attrs, "client_id": str(claims["client_id"])}
    if "scope" in claims:
        attrs["scope"] = str(claims["scope"])
    return Principal(
        id=f"client:{claims['client_id']}",
        kind="app",
        name=str(claims.get("name") or claims["sub"]),
        auth_method="jwt",
        roles=tuple(str(r) for r in roles),
        attributes=attrs,
        models=tuple(str(m) for m in models),
        key_id=str(claims.get("jti") or "") or None,
    )


class Identity:
    """Clients, tokens, people, sessions and second factors; the token verifiers and session resolver that the
    ``Authenticator`` is built with."""

    def __init__(
        self, settings: Settings, db: Database, *, keyring: Keyring, audit: AuditTrail, key_cache: CredentialCache,
        redis: Any = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.issuer = issuer_of(settings)
        self.sealer = Sealer(keyring)
        self.signing = SigningKeys(db, self.sealer)
        self.key_cache = key_cache
        self.clients = ClientService(db)
        self.clients.cache = key_cache  # one revocation channel for keys and clients
        self.users = UserService(db, self.sealer)
        self.users.on_locked = self._locked
        self.sessions = SessionStore(
            db, idle_s=settings.session_idle_s, absolute_s=settings.session_absolute_s
        )
        self.webauthn = WebAuthnFactor(db, origin=self.issuer, rp_id=settings.webauthn_rp_id)
        self.throttle = IpThrottle(free=settings.login_slowdown_after, redis=redis)
        self.token_endpoint = TokenEndpoint(
            self.clients,
            self.signing,
            issuer=self.issuer,
            audience=settings.token_audience,
            ttl_s=settings.access_token_ttl_s,
        )
        self.verifier = JwtVerifier(
            issuer=self.issuer,
            audience=settings.token_audience,
            algorithms=frozenset({ALG}),
            key_lookup=self.signing.public_key,
            to_principal=client_principal,
        )
        self.idp_verifier: JwtVerifier | None = None
        if settings.oidc_issuer and settings.oidc_jwks_url:
            from gateway.authn.oidc import oidc_verifier

            self.idp_verifier = oidc_verifier(settings)

    async def start(self) -> None:
        await ensure_signing_keys(self.db, self.sealer)
        await self.signing.load()
        await self.key_cache.start()

    async def close(self) -> None:
        await self.key_cache.close()

    def token_verifiers(self) -> list[TokenVerifier]:
        """Ours first, then the external IdP's (when configured)."""
        return [self.verify_client_token, *([self.idp_verifier] if self.idp_verifier is not None else [])]

    def session_resolvers(self) -> list[SessionResolver]:
        return [self.sessions.resolve]

    async def _locked(self, user_id: str) -> None:
        await self.audit.record(
            AuditEvent(
                Tag.ACCOUNT_LOCKED,
                actor=f"user:{user_id}",
                target=f"user:{user_id}",
                decision="deny",
                details={"after_failures": LOCKOUT_AFTER},
            )
        )

    async def principal_for(self, principal_id: str) -> Principal | None:
        """The principal a job acts for, as it stands now (None if revoked, disabled, expired or gone): a batch or
        dataset job re-reads it instead of trusting what was true when the job was queued."""
        kind, _, ident = principal_id.partition(":")
        now = utcnow()
        async with self.db.session() as s:
            if kind == "key":
                row = await s.get(ApiKey, ident)
                if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
                    return None
                return key_principal(row)
            if kind == "client":
                client = await self.clients.get_active(ident)
                if client is None:
                    return None
                return client_principal({"client_id": client.client_id, "sub": client.client_id,
                                         "name": client.name, "roles": list(client.roles or ["app"]),
                                         "attributes": dict(client.attributes or {}),
                                         "models": list(client.models or [])})
            if kind == "user":
                user = await s.get(User, ident)
                if user is None or user.disabled_at is not None or user.locked_at is not None:
                    return None
                return Principal(id=f"user:{user.id}", kind="user", name=user.username, auth_method="session",
                                 roles=tuple(user.roles or ()), attributes=dict(user.attributes or {}))
        return None

    async def verify_client_token(self, token: str) -> Principal | None:
        """One of our access tokens, honoured only while its client is active: disabling or deleting a client
        ends its tokens on the next request (like revoking an API key), not at their expiry."""
        principal = await self.verifier(token)
        if principal is None:
            return None
        client_id = principal.attributes["client_id"]
        if not await self.clients.is_active(client_id):
            _log.info("jwt rejected", issuer=self.issuer, reason="client disabled or deleted")
            return None
        return principal

    def metadata(self) -> dict[str, Any]:
        """OpenID Provider / OAuth AS metadata (RFC 8414) for what this issuer actually supports."""
        return {
            "issuer": self.issuer,
            "token_endpoint": f"{self.issuer}/oauth/token",
            "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALG],
            "access_token_signing_alg_values_supported": [ALG],
            "scopes_supported": [],
        }
