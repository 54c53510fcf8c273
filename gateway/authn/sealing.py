"""Encryption at rest for identity secrets (TOTP seeds, token-signing keys) through the platform keyring.

Identity code calls only :class:`Sealer` with the table, row and field a value belongs to, so a ciphertext copied
to another row or column does not open. The keyring (``gateway.crypto.Keyring``, ``services.keyring``) does the
work: AES-256-GCM envelope encryption with a data key per purpose ("totp", "signing").
"""

from __future__ import annotations

from typing import Any

from gateway.db.session import Database
from gateway.settings import Settings


class Sealer:
    def __init__(self, keyring: Any) -> None:
        self.keyring = keyring

    async def seal(self, plaintext: bytes, *, table: str, row: str, field: str, purpose: str) -> bytes:
        return self.keyring.encrypt(plaintext, table=table, row=row, field=field, purpose=purpose)

    async def open(self, blob: bytes, *, table: str, row: str, field: str, purpose: str) -> bytes:
        # adecrypt loads a data-key version that another process created after this one started
        return await self.keyring.adecrypt(blob, table=table, row=row, field=field, purpose=purpose)


async def open_sealer(settings: Settings, db: Database, keyring: Any = None) -> Sealer:
    """The process's keyring when wired (``services.keyring``), else one opened for this command."""
    if keyring is None:
        from gateway.crypto import open_keyring

        keyring = await open_keyring(settings, db)
    return Sealer(keyring)
