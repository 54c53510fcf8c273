"""Turns a request's credentials into a :class:`Principal`.

Schemes are tried by shape: ``pal_…`` bearer values are API keys; other bearer values go to the token verifiers
(OAuth2 JWTs) registered by the identity module; a session cookie goes to the session store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection

from gateway.audit.events import AuditEvent, AuditTrail, Tag
from gateway.authn.apikeys import ApiKeyService
from gateway.authn.principal import Principal
from gateway.errors import Unauthenticated
from gateway.middleware import request_id_of

#: bearer token -> principal or None (not mine / invalid)
TokenVerifier = Callable[[str], Awaitable[Principal | None]]
#: connection -> principal or None (no session)
SessionResolver = Callable[[ASGIConnection[Any, Any, Any, Any]], Awaitable[Principal | None]]

MAX_CREDENTIAL_LEN = 8192


class Authenticator:
    def __init__(
        self, keys: ApiKeyService, audit: AuditTrail, *, token_verifiers: list[TokenVerifier] | None = None,
        session_resolvers: list[SessionResolver] | None = None,
    ) -> None:
        self.keys = keys
        self.audit = audit
        self.token_verifiers: list[TokenVerifier] = list(token_verifiers or ())
        self.session_resolvers: list[SessionResolver] = list(session_resolvers or ())

    async def authenticate(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
        header = connection.headers.get("authorization")
        principal: Principal | None = None
        method = "none"
        if header is not None:
            scheme, _, credential = header.partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential or len(credential) > MAX_CREDENTIAL_LEN:
                await self._fail(connection, "malformed authorization header")
            if credential.startswith("pal_"):
                method = "api_key"
                principal = await self.keys.verify(credential)
            else:
                method = "jwt"
                for verify in self.token_verifiers:
                    principal = await verify(credential)
                    if principal is not None:
                        break
        else:
            for resolve in self.session_resolvers:
                principal = await resolve(connection)
                if principal is not None:
                    method = "session"
                    break
        if principal is None:
            await self._fail(connection, f"invalid credentials ({method})")
        return principal  # type: ignore[return-value]

    async def _fail(self, connection: ASGIConnection[Any, Any, Any, Any], reason: str) -> None:
        client = connection.client.host if connection.client else None
        await self.audit.record(
            AuditEvent(Tag.AUTHN_FAILURE, decision="deny", request_id=request_id_of(connection.scope),
                       details={"reason": reason, "client_ip": client, "path": connection.url.path})
        )
        raise Unauthenticated()
