"""People: accounts, password check, TOTP and recovery-code second factors, lockout.

Every person has a second factor from the start: creating an account creates its TOTP seed (shown once as an
otpauth URI and QR code) and its recovery codes. Failure accounting is per account and atomic: each failed
password or second factor adds one to ``failed_attempts``; the 100th locks the account; only a successful login
resets it. Messages never say whether an account exists (see ``LoginFailed``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, func, select, update

from gateway.authn import totp
from gateway.authn.passwords import check_policy, hash_password, verify_password
from gateway.authn.sealing import Sealer
from gateway.db.base import utcnow
from gateway.db.identity import RecoveryCode, User, UserSession, WebAuthnCredential
from gateway.db.session import Database

LOCKOUT_AFTER = 100
RECOVERY_CODES = 10
PERSON_ROLES = frozenset({"admin", "ml_engineer", "approver", "compliance_officer", "viewer"})
USER_ATTRIBUTES = frozenset({"department", "clearance", "team", "email"})
USERNAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,200}$")


class LoginFailed(Exception):
    """One message for every failure (unknown user, wrong password, wrong code, locked, disabled).

    ``str(exc)`` is the reason, for the audit record only; the client always gets ``MESSAGE``.
    """

    MESSAGE = "invalid credentials"

    def __init__(self, reason: str, user_id: str | None = None) -> None:
        super().__init__(reason)
        self.user_id = user_id


@dataclass(frozen=True)
class Enrolment:
    """What a person needs to set up their authenticator; shown once."""

    user_id: str
    username: str
    otpauth_uri: str
    recovery_codes: list[str]


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.replace("-", "").strip().lower().encode()).hexdigest()


def new_recovery_codes() -> list[str]:
    # 80 bits each, lower-case base32 in groups of four: easy to type, infeasible to guess
    import base64

    out = []
    for _ in range(RECOVERY_CODES):
        raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()
        out.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return out


class UserService:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self.db = db
        self.sealer = sealer
        #: awaited with the user id when a failure locks the account (the identity wiring audits it)
        self.on_locked: Callable[[str], Awaitable[None]] | None = None

    # --- accounts ---------------------------------------------------------------------------------------------
    async def create(
        self, username: str, password: str, *, roles: list[str], attributes: dict[str, Any] | None = None
    ) -> Enrolment:
        if not USERNAME_RE.match(username or ""):
            raise ValueError("username must be 1..200 characters of letters, digits, . _ @ -")
        if not roles or not set(roles) <= PERSON_ROLES:
            raise ValueError(f"roles must be among {sorted(PERSON_ROLES)}")
        attributes = dict(attributes or {})
        if set(attributes) - USER_ATTRIBUTES:
            raise ValueError(f"unknown user attributes {sorted(set(attributes) - USER_ATTRIBUTES)}")
        check_policy(password, username=username)
        seed = totp.new_seed()
        codes = new_recovery_codes()
        user = User(
            username=username,
            password_hash=hash_password(password),
            roles=list(roles),
            attributes=attributes,
            mfa_changed_at=utcnow(),
        )
        async with self.db.session() as s:
            if (await s.execute(select(User.id).where(User.username == username))).first() is not None:
                raise ValueError("username is taken")
            s.add(user)
            await s.flush()
            user.totp_seed_enc = await self.sealer.seal(
                seed.encode(), table="users", row=user.id, field="totp_seed", purpose="totp"
            )
            s.add_all([RecoveryCode(user_id=user.id, code_hash=_code_hash(c)) for c in codes])
        return Enrolment(user.id, username, totp.otpauth_uri(seed, username), codes)

    async def get(self, user_id: str) -> User | None:
        async with self.db.session() as s:
            return await s.get(User, user_id)

    async def by_name(self, username: str) -> User | None:
        async with self.db.session() as s:
            return (await s.execute(select(User).where(User.username == username))).scalar_one_or_none()

    async def list(self) -> list[User]:
        async with self.db.session() as s:
            return list((await s.execute(select(User).order_by(User.created_at))).scalars())

    async def set_disabled(self, user_id: str, disabled: bool) -> bool:
        """Disabling ends every session of the account at once."""
        async with self.db.session() as s:
            res = await s.execute(
                update(User).where(User.id == user_id).values(disabled_at=utcnow() if disabled else None)
            )
            if disabled:
                await s.execute(delete(UserSession).where(UserSession.user_id == user_id))
            return res.rowcount > 0

    async def unlock(self, user_id: str) -> bool:
        async with self.db.session() as s:
            res = await s.execute(
                update(User).where(User.id == user_id).values(locked_at=None, failed_attempts=0)
            )
            return res.rowcount > 0

    # --- first factor ---------------------------------------------------------------------------------------
    async def check_password(self, username: str, password: str) -> User:
        """The account for a correct password on a usable account; ``LoginFailed`` otherwise."""
        user = await self.by_name(username) if USERNAME_RE.match(username or "") else None
        ok = verify_password(user.password_hash if user else None, password)
        if user is None:
            raise LoginFailed("unknown account")
        if not ok:
            await self.record_failure(user.id)
            raise LoginFailed("wrong password", user.id)
        if user.locked_at is not None:
            raise LoginFailed("account locked", user.id)
        if user.disabled_at is not None:
            raise LoginFailed("account disabled", user.id)
        return user

    async def record_failure(self, user_id: str) -> tuple[int, bool]:
        """Add one failure atomically; returns (failures, locked_now)."""
        now = utcnow()
        async with self.db.session() as s:
            row = (
                await s.execute(
                    update(User)
                    .where(User.id == user_id)
                    .values(
                        failed_attempts=User.failed_attempts + 1,
                        locked_at=case(
                            (User.failed_attempts + 1 >= LOCKOUT_AFTER, func.coalesce(User.locked_at, now)),
                            else_=User.locked_at,
                        ),
                    )
                    .returning(User.failed_attempts, User.locked_at)
                )
            ).first()
        if row is None:
            return 0, False
        failures, locked_at = row
        locked_now = failures == LOCKOUT_AFTER and locked_at is not None
        if locked_now and self.on_locked is not None:
            await self.on_locked(user_id)
        return failures, locked_now

    # --- second factors -----------------------------------------------------------------------------------------
    async def _seed(self, user: User, field: str = "totp_seed") -> str:
        blob = user.totp_seed_enc if field == "totp_seed" else user.totp_pending_enc
        if blob is None:
            raise LoginFailed("no TOTP enrolled")
        return (
            await self.sealer.open(blob, table="users", row=user.id, field=field, purpose="totp")
        ).decode()

    async def verify_totp(self, user_id: str, code: str) -> bool:
        """Accept ``code`` once: the conditional UPDATE lets exactly one of two concurrent submissions win."""
        user = await self.get(user_id)
        if user is None:
            return False
        step = totp.matching_step(await self._seed(user), code)
        if step is not None:
            async with self.db.session() as s:
                res = await s.execute(
                    update(User)
                    .where(
                        User.id == user_id,
                        User.totp_last_step < step,
                        User.locked_at.is_(None),
                        User.disabled_at.is_(None),
                    )
                    .values(totp_last_step=step, failed_attempts=0)
                )
            if res.rowcount == 1:
                return True
        await self.record_failure(user_id)
        return False

    async def use_recovery_code(self, user_id: str, code: str) -> bool:
        if not isinstance(code, str) or len(code) > 64:
            await self.record_failure(user_id)
            return False
        now = utcnow()
        async with self.db.session() as s:
            res = await s.execute(
                update(RecoveryCode)
                .where(
                    RecoveryCode.user_id == user_id,
                    RecoveryCode.code_hash == _code_hash(code),
                    RecoveryCode.used_at.is_(None),
                )
                .values(used_at=now)
            )
            won = res.rowcount == 1
            if won:
                res = await s.execute(
                    update(User)
                    .where(User.id == user_id, User.locked_at.is_(None), User.disabled_at.is_(None))
                    .values(failed_attempts=0)
                )
                won = res.rowcount == 1
        if not won:
            await self.record_failure(user_id)
        return won

    async def usable(self, user_id: str) -> bool:
        user = await self.get(user_id)
        return user is not None and user.locked_at is None and user.disabled_at is None

    async def regenerate_recovery_codes(self, user_id: str) -> list[str]:
        codes = new_recovery_codes()
        async with self.db.session() as s:
            await s.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
            s.add_all([RecoveryCode(user_id=user_id, code_hash=_code_hash(c)) for c in codes])
            await s.execute(update(User).where(User.id == user_id).values(mfa_changed_at=utcnow()))
        return codes

    async def begin_totp_change(self, user_id: str) -> str:
        """A new seed waits in ``totp_pending`` until a code from it is confirmed; returns its otpauth URI."""
        user = await self.get(user_id)
        assert user is not None
        seed = totp.new_seed()
        enc = await self.sealer.seal(
            seed.encode(), table="users", row=user_id, field="totp_pending", purpose="totp"
        )
        async with self.db.session() as s:
            await s.execute(update(User).where(User.id == user_id).values(totp_pending_enc=enc))
        return totp.otpauth_uri(seed, user.username)

    async def confirm_totp_change(self, user_id: str, code: str) -> bool:
        user = await self.get(user_id)
        if user is None or user.totp_pending_enc is None:
            return False
        seed = await self._seed(user, "totp_pending")
        step = totp.matching_step(seed, code)
        if step is None:
            await self.record_failure(user_id)
            return False
        enc = await self.sealer.seal(
            seed.encode(), table="users", row=user_id, field="totp_seed", purpose="totp"
        )
        async with self.db.session() as s:
            res = await s.execute(
                update(User)
                .where(User.id == user_id, User.totp_pending_enc.is_not(None))
                .values(
                    totp_seed_enc=enc, totp_pending_enc=None, totp_last_step=step, mfa_changed_at=utcnow()
                )
            )
        return res.rowcount == 1

    async def webauthn_credentials(self, user_id: str) -> list[WebAuthnCredential]:
        async with self.db.session() as s:
            return list(
                (
                    await s.execute(select(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id))
                ).scalars()
            )


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "roles": user.roles,
        "attributes": user.attributes,
        "disabled": user.disabled_at is not None,
        "locked": user.locked_at is not None,
        "created_at": user.created_at.isoformat(),
    }
