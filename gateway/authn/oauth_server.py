"""``POST /oauth/token``: the client-credentials grant (RFC 6749 §4.4) on authlib's authorization server.

authlib's server is synchronous and framework-neutral; we adapt it in two small ways. The client row is fetched
(async) before authlib runs, and authlib's ``query_client`` answers from that prefetched row. Tokens are RFC 9068
JWT access tokens signed with the active ES256 key (``SigningKeys``), so the token generator is ours.
"""

from __future__ import annotations

import base64
import contextvars
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import InsecureTransportError
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant

from gateway.authn.clients import AuthlibClient, ClientService
from gateway.authn.signing import SigningKeys
from gateway.db.identity import OAuthClient

_prefetched: contextvars.ContextVar[OAuthClient | None] = contextvars.ContextVar(
    "prefetched_client", default=None
)
MAX_FORM_FIELDS = 20


class FormPayload(OAuth2Payload):
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    @property
    def data(self) -> dict[str, str]:
        return dict(self._pairs)

    @property
    def datalist(self) -> defaultdict[str, list]:
        out: defaultdict[str, list] = defaultdict(list)
        for k, v in self._pairs:
            out[k].append(v)
        return out


class FormRequest(OAuth2Request):
    def __init__(self, uri: str, headers: Any, pairs: list[tuple[str, str]]) -> None:
        super().__init__("POST", uri, headers=headers)
        self.payload = FormPayload(pairs)
        self._form = dict(pairs)

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass(frozen=True)
class TokenResult:
    status: int
    body: dict[str, Any]
    client: OAuthClient | None = None
    claims: dict[str, Any] | None = None


class _ClientCredentials(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class _Server(AuthorizationServer):
    def query_client(self, client_id: str) -> AuthlibClient | None:
        row = _prefetched.get()
        return AuthlibClient(row) if row is not None and row.client_id == client_id else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """JWT access tokens are self-contained; issuing is audited by the caller."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any]:
        return status, body


def _basic_client_id(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return unquote(raw.partition(":")[0]) or None


class TokenEndpoint:
    def __init__(
        self, clients: ClientService, keys: SigningKeys, *, issuer: str, audience: str, ttl_s: int
    ) -> None:
        self.clients = clients
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self.server = _Server()
        self.server.register_grant(_ClientCredentials)
        self.server.register_token_generator("default", self._generate)
        self._last_claims: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
            "last_claims", default=None
        )

    def _generate(
        self,
        grant_type: str,
        client: AuthlibClient,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = False,
    ) -> dict[str, Any]:
        row = client.row
        now = int(time.time())
        granted = client.get_allowed_scope(scope)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": row.client_id,
            "aud": self.audience,
            "client_id": row.client_id,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_s,
            "jti": secrets.token_urlsafe(16),
            "name": row.name,
            "roles": list(row.roles or ["app"]),
            "models": list(row.models or []),
            "attributes": dict(row.attributes or {}),
        }
        if granted:
            claims["scope"] = granted
        self._last_claims.set(claims)
        token = {"access_token": self.keys.sign_now(claims), "token_type": "Bearer", "expires_in": self.ttl_s}
        if granted:
            token["scope"] = granted
        return token

    async def issue(self, uri: str, headers: Any, body: bytes) -> TokenResult:
        """``headers``: a case-insensitive mapping (authlib reads "Authorization")."""
        try:
            pairs = parse_qsl(
                body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
            )
        except (UnicodeDecodeError, ValueError):
            return TokenResult(400, {"error": "invalid_request", "error_description": "malformed form body"})
        form = dict(pairs)
        client_id = _basic_client_id(headers.get("authorization")) or form.get("client_id")
        row = await self.clients.get_active(client_id) if client_id else None
        await self.keys.refresh_if_stale()
        token_reset = _prefetched.set(row)
        self._last_claims.set(None)
        try:
            request = FormRequest(uri, headers, pairs)
            status, out = self.server.create_token_response(request)
        except InsecureTransportError:
            return TokenResult(400, {"error": "insecure_transport", "error_description": "https is required"})
        finally:
            _prefetched.reset(token_reset)
        out = dict(out) if not isinstance(out, dict) else out
        return TokenResult(status, out, client=row if status == 200 else None, claims=self._last_claims.get())
