"""Server-side console sessions: cookie = 256-bit random value, the database keeps only its SHA-256.

Two stages. ``mfa``: the password was right, the second factor is outstanding; this session reaches only the
``/auth/login/*`` steps (cookie ``LOGIN_COOKIE``, 5 minutes). ``active``: both factors done; completing the second
factor always creates a *new* session id (no fixation). Idle 30 min and absolute 12 h timeouts are checked on
every use. Cookie-authenticated unsafe requests must carry the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from sqlalchemy import delete, update

from gateway.authn.principal import Principal
from gateway.db.base import utcnow
from gateway.db.identity import User, UserSession
from gateway.db.session import Database
from gateway.errors import Forbidden

SESSION_COOKIE = "__Host-palisade_session"
LOGIN_COOKIE = "__Host-palisade_login"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PENDING_TTL = timedelta(minutes=5)
TOUCH_EVERY = timedelta(seconds=60)


def _h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class NewSession:
    token: str  # cookie value; never stored
    csrf: str | None
    row: UserSession


def session_cookie(name: str, value: str, max_age: int) -> Cookie:
    # __Host- prefix: Secure, Path=/, no Domain; Strict keeps cross-site requests from carrying it
    return Cookie(
        key=name, value=value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict"
    )


def clear_cookie(name: str) -> Cookie:
    return Cookie(key=name, value="", max_age=0, path="/", secure=True, httponly=True, samesite="strict")


class SessionStore:
    def __init__(self, db: Database, *, idle_s: int, absolute_s: int) -> None:
        self.db = db
        self.idle = timedelta(seconds=idle_s)
        self.absolute = timedelta(seconds=absolute_s)

    async def create(
        self,
        user_id: str,
        *,
        stage: str,
        client_ip: str | None,
        mfa_method: str | None = None,
    ) -> NewSession:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32) if stage == "active" else None
        now = utcnow()
        row = UserSession(
            id=_h(token),
            user_id=user_id,
            stage=stage,
            csrf_hash=_h(csrf) if csrf else None,
            created_at=now,
            last_seen_at=now,
            mfa_at=now if stage == "active" else None,
            mfa_method=mfa_method,
            client_ip=client_ip,
        )
        async with self.db.session() as s:
            s.add(row)
        return NewSession(token, csrf, row)

    def _expired(self, row: UserSession, now: datetime) -> bool:
        if row.stage == "mfa":
            return now - row.created_at > PENDING_TTL
        return now - row.last_seen_at > self.idle or now - row.created_at > self.absolute

    async def get(self, token: str | None, *, stage: str) -> UserSession | None:
        if not token or len(token) > 128:
            return None
        now = utcnow()
        async with self.db.session() as s:
            row = await s.get(UserSession, _h(token))
            if row is None or row.stage != stage:
                return None
            if self._expired(row, now):
                await s.delete(row)
                return None
            if stage == "active" and now - row.last_seen_at > TOUCH_EVERY:
                row.last_seen_at = now
        return row

    async def promote(self, pending: UserSession, mfa_method: str) -> NewSession:
        """Second factor done: drop the pending session and start an active one under a new id."""
        async with self.db.session() as s:
            await s.execute(delete(UserSession).where(UserSession.id == pending.id))
        return await self.create(
            pending.user_id, stage="active", client_ip=pending.client_ip, mfa_method=mfa_method
        )

    async def mark_mfa(self, session_id: str, method: str) -> None:
        async with self.db.session() as s:
            await s.execute(
                update(UserSession)
                .where(UserSession.id == session_id)
                .values(mfa_at=utcnow(), mfa_method=method)
            )

    async def set_challenge(self, session_id: str, challenge: str | None) -> None:
        async with self.db.session() as s:
            await s.execute(
                update(UserSession).where(UserSession.id == session_id).values(challenge=challenge)
            )

    async def take_challenge(self, session_id: str) -> str | None:
        """Read and clear the pending WebAuthn challenge (each challenge is usable once)."""
        async with self.db.session() as s:
            row = await s.get(UserSession, session_id)
            if row is None or row.challenge is None:
                return None
            challenge = row.challenge
            res = await s.execute(
                update(UserSession)
                .where(UserSession.id == session_id, UserSession.challenge == challenge)
                .values(challenge=None)
            )
            return challenge if res.rowcount == 1 else None

    async def end(self, session_id: str) -> None:
        async with self.db.session() as s:
            await s.execute(delete(UserSession).where(UserSession.id == session_id))

    async def end_all(self, user_id: str) -> int:
        async with self.db.session() as s:
            res = await s.execute(delete(UserSession).where(UserSession.user_id == user_id))
            return res.rowcount

    async def resolve(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
        """The ``SessionResolver`` registered into the Authenticator."""
        token = connection.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        row = await self.get(token, stage="active")
        if row is None:
            return None
        if connection.scope.get("method", "GET") not in SAFE_METHODS:
            sent = connection.headers.get(CSRF_HEADER) or ""
            if not row.csrf_hash or not hmac.compare_digest(_h(sent), row.csrf_hash):
                raise Forbidden("missing or invalid CSRF token", code="csrf_failed")
        async with self.db.session() as s:
            user = await s.get(User, row.user_id)
        if user is None or user.disabled_at is not None or user.locked_at is not None:
            return None
        connection.scope.setdefault("state", {})["session_id"] = row.id
        attrs = dict(user.attributes or {})
        return Principal(
            id=f"user:{user.id}",
            kind="user",
            name=user.username,
            auth_method="session",
            roles=tuple(user.roles or ()),
            attributes=attrs,
            mfa_at=row.mfa_at,
            key_id=row.id,
        )
