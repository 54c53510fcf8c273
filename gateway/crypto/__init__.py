"""Keyring (envelope encryption with AES-256-GCM), key-encryption keys, rotation.

Use::

    keyring = services.keyring
    blob = keyring.encrypt(seed, table="totp_factors", row=factor.id, field="seed", purpose="totp")
    seed = keyring.decrypt(blob, table="totp_factors", row=factor.id, field="seed", purpose="totp")
    keyring.hmac("audit-hmac", token)   # matchable stand-in for a secret
"""

from __future__ import annotations

from gateway.crypto.kek import KeyEncryptionKey, KeyringError, LocalKek
from gateway.crypto.keyring import DEFAULT_PURPOSES, Keyring, RotationReport
from gateway.db.session import Database
from gateway.settings import Settings


async def open_keyring(settings: Settings, db: Database) -> Keyring:
    """The process's keyring with every data key loaded (creating the KEK file and first data keys if needed)."""
    return await Keyring(db, LocalKek.from_env_or_file(settings.data_dir)).load()


__all__ = [
    "DEFAULT_PURPOSES",
    "KeyEncryptionKey",
    "Keyring",
    "KeyringError",
    "LocalKek",
    "RotationReport",
    "open_keyring",
]
