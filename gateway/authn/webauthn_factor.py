"""WebAuthn (security keys, platform authenticators) as a second factor, with the ``webauthn`` package.

Both ceremonies keep their challenge server-side on the session (``UserSession.challenge``), usable once.
The relying party id defaults to the issuer's host and the expected origin to the issuer's origin.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from gateway.db.base import utcnow
from gateway.db.identity import User, WebAuthnCredential
from gateway.db.session import Database

RP_NAME = "Palisade"
MAX_CREDENTIAL_JSON = 16_384


class WebAuthnFailed(Exception):
    """The ceremony did not verify (bad signature, wrong challenge/origin/rp, unknown credential, ...)."""


def _credential_json(credential: Any) -> str:
    raw = credential if isinstance(credential, str) else json.dumps(credential)
    if len(raw) > MAX_CREDENTIAL_JSON:
        raise WebAuthnFailed("credential too large")
    return raw


class WebAuthnFactor:
    def __init__(self, db: Database, *, origin: str, rp_id: str | None = None) -> None:
        self.db = db
        self.origin = origin.rstrip("/")
        self.rp_id = rp_id or urlsplit(self.origin).hostname or "localhost"

    # --- registration (an active, recently MFA-checked session adds a credential) ---------------------------
    async def registration_options(self, user: User) -> tuple[dict[str, Any], str]:
        existing = await self._credentials(user.id)
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=RP_NAME,
            user_name=user.username,
            user_id=user.id.encode(),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(c.credential_id)) for c in existing
            ],
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.DISCOURAGED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
        )
        return json.loads(options_to_json(options)), bytes_to_base64url(options.challenge)

    async def register(self, user_id: str, credential: Any, challenge: str, name: str) -> WebAuthnCredential:
        try:
            verified = verify_registration_response(
                credential=_credential_json(credential),
                expected_challenge=base64url_to_bytes(challenge),
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            raise WebAuthnFailed(type(exc).__name__) from exc
        row = WebAuthnCredential(
            user_id=user_id,
            credential_id=bytes_to_base64url(verified.credential_id),
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            name=(name or "security key")[:200],
        )
        async with self.db.session() as s:
            if (
                await s.execute(
                    select(WebAuthnCredential.id).where(WebAuthnCredential.credential_id == row.credential_id)
                )
            ).first():
                raise WebAuthnFailed("credential already registered")
            s.add(row)
        return row

    # --- authentication (second factor at login, or step-up) -------------------------------------------------
    async def authentication_options(self, user_id: str) -> tuple[dict[str, Any], str] | None:
        creds = await self._credentials(user_id)
        if not creds:
            return None
        options = generate_authentication_options(
            rp_id=self.rp_id,
            allow_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(c.credential_id)) for c in creds
            ],
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        return json.loads(options_to_json(options)), bytes_to_base64url(options.challenge)

    async def authenticate(self, user_id: str, credential: Any, challenge: str) -> WebAuthnCredential:
        raw = _credential_json(credential)
        try:
            cred_id = json.loads(raw)["id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise WebAuthnFailed("malformed credential") from exc
        async with self.db.session() as s:
            row = (
                await s.execute(
                    select(WebAuthnCredential).where(
                        WebAuthnCredential.credential_id == str(cred_id),
                        WebAuthnCredential.user_id == user_id,
                    )
                )
            ).scalar_one_or_none()
        if row is None:
            raise WebAuthnFailed("unknown credential")
        try:
            verified = verify_authentication_response(
                credential=raw,
                expected_challenge=base64url_to_bytes(challenge),
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                credential_public_key=row.public_key,
                credential_current_sign_count=row.sign_count,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            raise WebAuthnFailed(type(exc).__name__) from exc
        async with self.db.session() as s:
            # compare-and-set on the counter: a cloned authenticator replaying an old count loses
            res = await s.execute(
                update(WebAuthnCredential)
                .where(WebAuthnCredential.id == row.id, WebAuthnCredential.sign_count == row.sign_count)
                .values(sign_count=verified.new_sign_count, last_used_at=utcnow())
            )
        if res.rowcount != 1:
            raise WebAuthnFailed("concurrent use of one credential")
        return row

    async def remove(self, user_id: str, credential_row_id: str) -> bool:
        async with self.db.session() as s:
            row = await s.get(WebAuthnCredential, credential_row_id)
            if row is None or row.user_id != user_id:
                return False
            await s.delete(row)
        return True

    async def _credentials(self, user_id: str) -> list[WebAuthnCredential]:
        async with self.db.session() as s:
            return list(
                (
                    await s.execute(select(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id))
                ).scalars()
            )
