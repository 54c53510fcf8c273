"""OAuth2 clients (machine identities): registered by admins, secret shown once and stored hashed."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update

from gateway.db.base import utcnow
from gateway.db.identity import OAuthClient
from gateway.db.session import Database

CLIENT_ID_RE = re.compile(r"^pcl_[0-9a-f]{16}$")
#: attributes an admin may set on a client (ABAC subject attributes); anything else is refused
CLIENT_ATTRIBUTES = frozenset({"department", "classification_ceiling", "owner", "clearance", "team"})
APP_ROLES = frozenset({"app"})


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewClient:
    id: str
    client_id: str
    client_secret: str  # the only time it exists outside the caller's hands


class AuthlibClient:
    """authlib's ClientMixin over one row (client_secret_basic and client_secret_post, client_credentials only)."""

    AUTH_METHODS = ("client_secret_basic", "client_secret_post")

    def __init__(self, row: OAuthClient) -> None:
        self.row = row

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(self.row.scopes or [])
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(self.row.secret_hash, hash_secret(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in self.AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class ClientService:
    def __init__(self, db: Database) -> None:
        self.db = db
        #: revocation-aware cache of "is this client still active" (gateway.authn.revocation.CredentialCache),
        #: set by the identity wiring; the CLI runs without one and only announces
        self.cache: Any = None

    async def create(
        self,
        name: str,
        *,
        roles: list[str] | None = None,
        models: list[str] | None = None,
        attributes: dict[str, Any] | None = None,
        scopes: list[str] | None = None,
    ) -> NewClient:
        if not name or len(name) > 200:
            raise ValueError("client name must be 1..200 characters")
        roles = list(roles or ["app"])
        if not set(roles) <= APP_ROLES:
            raise ValueError(f"clients may only hold the roles {sorted(APP_ROLES)}")
        attributes = dict(attributes or {})
        unknown = set(attributes) - CLIENT_ATTRIBUTES
        if unknown:
            raise ValueError(f"unknown client attributes {sorted(unknown)}")
        client_id = "pcl_" + secrets.token_hex(8)
        secret = "pcs_" + secrets.token_urlsafe(32)
        row = OAuthClient(
            client_id=client_id,
            name=name,
            secret_hash=hash_secret(secret),
            roles=roles,
            attributes=attributes,
            models=list(models or []),
            scopes=list(scopes or []),
        )
        async with self.db.session() as s:
            s.add(row)
        return NewClient(id=row.id, client_id=client_id, client_secret=secret)

    async def get_active(self, client_id: str) -> OAuthClient | None:
        if not CLIENT_ID_RE.match(client_id or ""):
            return None
        async with self.db.session() as s:
            row = (
                await s.execute(select(OAuthClient).where(OAuthClient.client_id == client_id))
            ).scalar_one_or_none()
        if row is None or row.disabled_at is not None:
            return None
        return row

    async def is_active(self, client_id: str) -> bool:
        """Whether tokens of this client are still honoured (not disabled, not deleted). Checked on every request
        carrying one of our JWTs, so it is cached; disabling or deleting announces a revocation that empties the
        cache on every replica before its next request."""
        lookup = "client:" + client_id
        cached = self.cache.get(lookup) if self.cache is not None else None
        if cached is not None:
            return bool(cached.value)
        generation = self.cache.generation if self.cache is not None else 0
        row = await self.get_active(client_id)
        if self.cache is not None:
            idents = (client_id, row.id) if row is not None else (client_id,)
            self.cache.put(lookup, "", row is not None, *idents, generation=generation)
        return row is not None

    async def _announce(self, client_id: str) -> None:
        from gateway.authn.revocation import announce_revocation

        if self.cache is not None:
            self.cache.evict(client_id)
        await announce_revocation(self.db.settings, client_id)

    async def touch(self, row_id: str) -> None:
        async with self.db.session() as s:
            await s.execute(update(OAuthClient).where(OAuthClient.id == row_id).values(last_used_at=utcnow()))

    async def disable(self, client_id: str) -> bool:
        async with self.db.session() as s:
            res = await s.execute(
                update(OAuthClient)
                .where((OAuthClient.client_id == client_id) | (OAuthClient.id == client_id))
                .where(OAuthClient.disabled_at.is_(None))
                .values(disabled_at=utcnow())
            )
            done = res.rowcount > 0
        if done:
            # tokens already issued die with the client: every replica refuses them on its next request
            await self._announce(client_id)
        return done

    async def delete(self, client_id: str) -> bool:
        async with self.db.session() as s:
            res = await s.execute(
                delete(OAuthClient).where((OAuthClient.client_id == client_id) | (OAuthClient.id == client_id))
            )
            done = res.rowcount > 0
        if done:
            await self._announce(client_id)
        return done

    async def list(self) -> list[OAuthClient]:
        async with self.db.session() as s:
            return list((await s.execute(select(OAuthClient).order_by(OAuthClient.created_at))).scalars())


def client_view(row: OAuthClient) -> dict[str, Any]:
    """A client as the admin API and CLI show it: never the secret or its hash."""
    return {
        "id": row.id,
        "client_id": row.client_id,
        "name": row.name,
        "roles": row.roles,
        "models": row.models,
        "attributes": row.attributes,
        "scopes": row.scopes,
        "disabled": row.disabled_at is not None,
        "created_at": row.created_at.isoformat(),
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
    }
