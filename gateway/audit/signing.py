"""Ed25519 signing of checkpoints and export manifests. The private key lives in ``audit_signing_keys``,
encrypted by the keyring (purpose "signing"); verifiers need only the public key (``palisade audit public-key``)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select

from gateway.db.audit import AuditSigningKey
from gateway.db.session import Database

#: records a public key outside the database (the pinned-keys file), before or when it signs
Pin = Callable[[Ed25519PublicKey], None]

_RAW = {"encoding": serialization.Encoding.Raw, "format": serialization.PublicFormat.Raw}


def key_id_of(public: Ed25519PublicKey) -> str:
    return "ed25519:" + hashlib.sha256(public.public_bytes(**_RAW)).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_pem(pem: str | bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def check_signature(
    keys: dict[str, Ed25519PublicKey], key_id: str, payload: bytes, signature: str
) -> str | None:
    """None when valid, else "unknown-key" or "bad-signature"."""
    key = keys.get(key_id)
    if key is None:
        return "unknown-key"
    try:
        key.verify(base64.b64decode(signature), payload)
    except (InvalidSignature, ValueError):
        return "bad-signature"
    return None


@dataclass
class AuditSigner:
    key_id: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self.private.sign(payload)).decode()

    @classmethod
    async def load_or_create(
        cls,
        db: Database,
        keyring,  # noqa: ANN001 (gateway.crypto.Keyring)
        pin: Pin | None = None,
    ) -> AuditSigner:
        """The active signing key (a new one when there is none); ``pin`` records its public key outside the
        database (gateway.audit.pins.pinner) so that verify trusts it."""
        async with db.session() as s:
            row = (
                await s.execute(
                    select(AuditSigningKey)
                    .where(AuditSigningKey.active.is_(True))
                    .order_by(AuditSigningKey.created_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
        if row is None:
            return await cls.create(db, keyring, pin)
        raw = await keyring.adecrypt(
            row.private_key,
            table="audit_signing_keys",
            row=row.key_id,
            field="private_key",
            purpose="signing",
        )
        signer = cls(row.key_id, Ed25519PrivateKey.from_private_bytes(raw))
        if pin is not None:
            # it decrypted under the keyring, so the gateway made it: pin it if an older version did not
            pin(signer.public)
        return signer

    @classmethod
    async def create(cls, db: Database, keyring, pin: Pin | None = None) -> AuditSigner:  # noqa: ANN001
        """A new signing key; the newest active one signs, and older ones stay so their checkpoints still verify
        (no UPDATE: the gateway's database role may only INSERT signing keys)."""
        private = Ed25519PrivateKey.generate()
        kid = key_id_of(private.public_key())
        if pin is not None:  # pinned before it can sign anything
            pin(private.public_key())
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        blob = keyring.encrypt(raw, table="audit_signing_keys", row=kid, field="private_key", purpose="signing")
        async with db.session() as s:
            s.add(AuditSigningKey(key_id=kid, public_key=public_pem(private.public_key()), private_key=blob))
        return cls(kid, private)

