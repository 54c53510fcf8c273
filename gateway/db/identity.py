"""Identity: OAuth2 clients, people, their second factors, console sessions and token-signing keys.

Nothing secret is stored in clear: client secrets and session ids are hashed, passwords are argon2id hashes,
TOTP seeds and signing keys are encrypted through the keyring (AAD binds table, row and field).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, IdMixin


class OAuthClient(IdMixin, Base):
    """A machine identity that obtains access tokens with the client-credentials grant."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(200))
    #: SHA-256 of the secret (256 random bits, so a fast hash is sound)
    secret_hash: Mapped[str] = mapped_column(String(64))
    roles: Mapped[list] = mapped_column(default=list)
    #: department, classification ceiling, owner, ... (ABAC subject attributes)
    attributes: Mapped[dict] = mapped_column(default=dict)
    #: model aliases the client may call; empty = whatever policy allows
    models: Mapped[list] = mapped_column(default=list)
    scopes: Mapped[list] = mapped_column(default=list)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class User(IdMixin, Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    roles: Mapped[list] = mapped_column(default=list)
    #: department, clearance, ... (ABAC subject attributes)
    attributes: Mapped[dict] = mapped_column(default=dict)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    #: consecutive failed second-factor / password attempts; reset only by a successful login
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[datetime | None] = mapped_column(default=None)
    totp_seed_enc: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    #: the last accepted TOTP time step; a code is accepted only for a step strictly after it (no replay)
    totp_last_step: Mapped[int] = mapped_column(BigInteger, default=0)
    #: a new seed waiting for its first code before it replaces the current one
    totp_pending_enc: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    mfa_changed_at: Mapped[datetime | None] = mapped_column(default=None)


class RecoveryCode(IdMixin, Base):
    __tablename__ = "recovery_codes"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class WebAuthnCredential(IdMixin, Base):
    __tablename__ = "webauthn_credentials"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    #: base64url credential id as the authenticator gives it
    credential_id: Mapped[str] = mapped_column(String(1400), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    name: Mapped[str] = mapped_column(String(200), default="security key")
    transports: Mapped[list] = mapped_column(default=list)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class UserSession(Base):
    """A server-side console session. The id column holds SHA-256 of the cookie value, never the value."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    #: "mfa" = password checked, second factor outstanding (reaches only the /auth/login/* steps); "active"
    stage: Mapped[str] = mapped_column(String(16))
    csrf_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column()
    last_seen_at: Mapped[datetime] = mapped_column()
    mfa_at: Mapped[datetime | None] = mapped_column(default=None)
    mfa_method: Mapped[str | None] = mapped_column(String(16), default=None)
    #: a pending WebAuthn challenge (registration or authentication) bound to this session
    challenge: Mapped[str | None] = mapped_column(String(200), default=None)
    client_ip: Mapped[str | None] = mapped_column(String(64), default=None)


class SigningKey(Base):
    """An access-token signing key. Life cycle: next (published) -> active (signs) -> retiring -> retired."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    private_key_enc: Mapped[bytes] = mapped_column(LargeBinary)
    public_jwk: Mapped[dict] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()
    activated_at: Mapped[datetime | None] = mapped_column(default=None)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)
