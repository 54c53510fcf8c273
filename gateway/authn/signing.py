"""Access-token signing keys (ES256): stored encrypted, published in JWKS, rotated with overlap.

Life cycle, one step per ``rotate()``: a new key starts as ``next`` (published in JWKS, not signing), the old
``next`` becomes ``active`` (signs), the old ``active`` becomes ``retiring`` (still published, so tokens it signed
keep verifying until they expire) and the old ``retiring`` becomes ``retired`` (gone from JWKS; its tokens fail).
So every key is published for a whole rotation before it signs: publish, then sign, then retire.

Each process keeps the published keys in memory, reloads them every ``RELOAD_S`` and, at most once per
``UNKNOWN_KID_RELOAD_S``, when a token names a kid it does not know.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select, text, update

from gateway.authn.sealing import Sealer
from gateway.db.base import utcnow
from gateway.db.identity import SigningKey
from gateway.db.session import Database

ALG = "ES256"
PUBLISHED = ("next", "active", "retiring")
RELOAD_S = 30.0
UNKNOWN_KID_RELOAD_S = 5.0
ACCESS_TOKEN_TYP = "at+jwt"  # RFC 9068  # noqa: S105 (a name, not a secret)


def _new_key() -> tuple[str, ECKey]:
    key = ECKey.generate_key("P-256", private=True)
    return key.thumbprint(), key


async def _insert_key(s: Any, sealer: Sealer, state: str) -> str:
    kid, key = _new_key()
    now = utcnow()
    enc = await sealer.seal(
        json.dumps(key.as_dict(private=True)).encode(),
        table="signing_keys",
        row=kid,
        field="private_key",
        purpose="signing",
    )
    public = {**key.as_dict(private=False), "kid": kid, "alg": ALG, "use": "sig"}
    s.add(
        SigningKey(
            kid=kid,
            alg=ALG,
            state=state,
            private_key_enc=enc,
            public_jwk=public,
            created_at=now,
            activated_at=now if state == "active" else None,
        )
    )
    return kid


async def _lock(s: Any) -> None:
    """Serialise key bootstrap/rotation across replicas (Postgres); SQLite has a single writer anyway."""
    if s.bind.dialect.name == "postgresql":
        await s.execute(text("SELECT pg_advisory_xact_lock(7301003)"))


async def ensure_signing_keys(db: Database, sealer: Sealer) -> None:
    """First start: one active key and one published successor."""
    async with db.session() as s:
        await _lock(s)
        states = set(
            (await s.execute(select(SigningKey.state).where(SigningKey.state.in_(PUBLISHED)))).scalars()
        )
        if "active" not in states:
            await _insert_key(s, sealer, "active")
        if "next" not in states:
            await _insert_key(s, sealer, "next")


async def rotate_signing_keys(db: Database, sealer: Sealer) -> dict[str, str | None]:
    """Advance the life cycle by one step; returns the kids now in each state."""
    await ensure_signing_keys(db, sealer)
    now = utcnow()
    async with db.session() as s:
        await _lock(s)
        await s.execute(
            update(SigningKey).where(SigningKey.state == "retiring").values(state="retired", retired_at=now)
        )
        await s.execute(update(SigningKey).where(SigningKey.state == "active").values(state="retiring"))
        await s.execute(
            update(SigningKey).where(SigningKey.state == "next").values(state="active", activated_at=now)
        )
        new_next = await _insert_key(s, sealer, "next")
        rows = (await s.execute(select(SigningKey).where(SigningKey.state.in_(PUBLISHED)))).scalars().all()
        out: dict[str, str | None] = {"next": new_next, "active": None, "retiring": None}
        for r in rows:
            if r.state in ("active", "retiring"):
                out[r.state] = r.kid
        return out


class SigningKeys:
    """One process's view of the keys: the active private key for signing, every published public key."""

    def __init__(self, db: Database, sealer: Sealer) -> None:
        self.db = db
        self.sealer = sealer
        self._public: dict[str, ECKey] = {}
        self._jwks: list[dict[str, Any]] = []
        self._active: tuple[str, ECKey] | None = None
        self._loaded_at = 0.0
        self._unknown_reload_at = 0.0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        async with self.db.session() as s:
            rows = (
                (
                    await s.execute(
                        select(SigningKey)
                        .where(SigningKey.state.in_(PUBLISHED))
                        .order_by(SigningKey.created_at)
                    )
                )
                .scalars()
                .all()
            )
        public: dict[str, ECKey] = {}
        active: tuple[str, ECKey] | None = None
        for r in rows:
            public[r.kid] = ECKey.import_key(dict(r.public_jwk))
            if r.state == "active" and (active is None or r.activated_at is not None):
                raw = await self.sealer.open(
                    r.private_key_enc, table="signing_keys", row=r.kid, field="private_key", purpose="signing"
                )
                active = (r.kid, ECKey.import_key(json.loads(raw)))
        self._public, self._active = public, active
        self._jwks = [dict(r.public_jwk) for r in rows]
        self._loaded_at = time.monotonic()

    async def refresh_if_stale(self) -> None:
        if time.monotonic() - self._loaded_at > RELOAD_S:
            async with self._lock:
                if time.monotonic() - self._loaded_at > RELOAD_S:
                    await self.load()

    async def public_key(self, kid: str) -> ECKey | None:
        await self.refresh_if_stale()
        key = self._public.get(kid)
        if key is None and time.monotonic() - self._unknown_reload_at > UNKNOWN_KID_RELOAD_S:
            # a key published by another replica's rotation; bounded so forged kids cannot hammer the DB
            async with self._lock:
                if time.monotonic() - self._unknown_reload_at > UNKNOWN_KID_RELOAD_S:
                    self._unknown_reload_at = time.monotonic()
                    await self.load()
            key = self._public.get(kid)
        return key

    async def jwks(self) -> dict[str, Any]:
        await self.refresh_if_stale()
        return {"keys": list(self._jwks)}

    def sign_now(self, claims: dict[str, Any]) -> str:
        """Sign with the active key as loaded (call ``refresh_if_stale`` first from async code)."""
        if self._active is None:
            raise RuntimeError("no active signing key loaded")
        kid, key = self._active
        header = {"alg": ALG, "kid": kid, "typ": ACCESS_TOKEN_TYP}
        return jwt.encode(header, claims, key, algorithms=[ALG])

    async def sign(self, claims: dict[str, Any]) -> str:
        await self.refresh_if_stale()
        if self._active is None:
            await self.load()
        return self.sign_now(claims)
