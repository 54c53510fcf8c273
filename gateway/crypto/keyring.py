"""Envelope encryption: per-purpose data keys (versioned, wrapped by the KEK) and AES-256-GCM field encryption.

A ciphertext ("blob") is ``0x01 | data-key version (4 bytes, big endian) | 96-bit nonce | ciphertext+tag``. The
AAD binds purpose, table, row, field and key version, so a blob copied to another row, column or purpose does not
open. Data keys are unwrapped once (``await keyring.load()``) and kept in memory, so ``encrypt``/``decrypt`` and
``hmac`` are plain synchronous calls usable anywhere, including inside async handlers.

Rotation (``await keyring.rotate()``, CLI ``palisade keys rotate``) adds a data-key version per purpose (new
encryptions use it; old blobs stay readable because every version is kept) and re-wraps every data key under the
current KEK. Running processes keep working: they hold their data keys in memory and ``adecrypt`` loads a version
another process created on first sight.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import secrets
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from gateway.crypto.kek import NONCE_BYTES, KeyEncryptionKey, KeyringError
from gateway.db.keyring import DataKey
from gateway.db.session import Database

#: purposes every gateway creates at start; others are created by ``await keyring.ensure(purpose)``
DEFAULT_PURPOSES = ("totp", "signing", "prompts", "datasets", "audit-hmac", "secrets")
_FORMAT = 1
_HEADER = struct.Struct(">BI")  # format byte, data-key version


def _dek_aad(purpose: str, version: int) -> bytes:
    return f"palisade-dek|{purpose}|{version}".encode()


def _field_aad(purpose: str, table: str, row: str, field_name: str, version: int) -> bytes:
    # unit separators: no value can forge another's boundaries
    return "\x1f".join(("palisade-field-v1", purpose, table, str(row), field_name, str(version))).encode()


@dataclass
class RotationReport:
    kek_id: str
    new_versions: dict[str, int] = field(default_factory=dict)
    rewrapped: int = 0


class Keyring:
    def __init__(
        self, db: Database, kek: KeyEncryptionKey, purposes: tuple[str, ...] = DEFAULT_PURPOSES
    ) -> None:
        self.db = db
        self.kek = kek
        self.purposes = purposes
        self._keys: dict[str, dict[int, bytes]] = {}  # purpose -> version -> data key

    # --- loading -------------------------------------------------------------------------------------------
    async def load(self) -> Keyring:
        """Create missing data keys for the default purposes and unwrap every data key into memory."""
        await self.refresh()
        for purpose in self.purposes:
            if purpose not in self._keys:
                await self.ensure(purpose)
        return self

    async def refresh(self) -> None:
        async with self.db.session() as s:
            rows = list((await s.execute(select(DataKey))).scalars())
        for row in rows:
            known = self._keys.setdefault(row.purpose, {})
            if row.version not in known:
                known[row.version] = await self.kek.unwrap(
                    row.kek_id, row.wrapped, _dek_aad(row.purpose, row.version)
                )

    async def ensure(self, purpose: str) -> None:
        """Make sure ``purpose`` has a data key (first use creates version 1)."""
        if self._keys.get(purpose):
            return
        await self._add_version(purpose, 1)
        await self.refresh()

    async def _add_version(self, purpose: str, version: int) -> bool:
        dek = secrets.token_bytes(32)
        kek_id, wrapped = await self.kek.wrap(dek, _dek_aad(purpose, version))
        try:
            async with self.db.session() as s:
                s.add(DataKey(purpose=purpose, version=version, kek_id=kek_id, wrapped=wrapped))
        except IntegrityError:
            return False  # another process created this version first; its key is the one
        return True

    # --- field encryption ----------------------------------------------------------------------------------
    def current_version(self, purpose: str) -> int:
        versions = self._keys.get(purpose)
        if not versions:
            raise KeyringError(
                f"no data key for purpose {purpose!r}; call `await keyring.ensure({purpose!r})`"
            )
        return max(versions)

    def encrypt(self, plaintext: bytes, *, table: str, row: str, field: str, purpose: str) -> bytes:
        version = self.current_version(purpose)
        nonce = secrets.token_bytes(NONCE_BYTES)  # fresh 96-bit nonce per encryption
        ct = AESGCM(self._keys[purpose][version]).encrypt(
            nonce, plaintext, _field_aad(purpose, table, row, field, version)
        )
        return _HEADER.pack(_FORMAT, version) + nonce + ct

    def decrypt(self, blob: bytes, *, table: str, row: str, field: str, purpose: str) -> bytes:
        version = self.blob_version(blob)
        key = self._keys.get(purpose, {}).get(version)
        if key is None:
            raise KeyringError(f"data key {purpose!r} version {version} is not loaded (use adecrypt)")
        start = _HEADER.size
        try:
            return AESGCM(key).decrypt(
                blob[start : start + NONCE_BYTES],
                blob[start + NONCE_BYTES :],
                _field_aad(purpose, table, row, field, version),
            )
        except InvalidTag as exc:
            raise KeyringError(
                f"ciphertext for {table}.{field} row {row} does not open (tampered or moved)"
            ) from exc

    async def adecrypt(self, blob: bytes, *, table: str, row: str, field: str, purpose: str) -> bytes:
        """``decrypt``, first loading a data-key version another process created since start."""
        if self.blob_version(blob) not in self._keys.get(purpose, {}):
            await self.refresh()
        return self.decrypt(blob, table=table, row=row, field=field, purpose=purpose)

    @staticmethod
    def blob_version(blob: bytes) -> int:
        if len(blob) < _HEADER.size + NONCE_BYTES + 16:
            raise KeyringError("ciphertext is too short")
        fmt, version = _HEADER.unpack_from(blob)
        if fmt != _FORMAT:
            raise KeyringError(f"unknown ciphertext format {fmt}")
        return version

    # --- matchable values ----------------------------------------------------------------------------------
    def hmac(self, purpose: str, value: str | bytes) -> str:
        """A keyed, matchable stand-in for a secret (a token in an audit record): ``v<version>:<hex>``."""
        version = self.current_version(purpose)
        return self._hmac(purpose, version, value)

    def hmac_candidates(self, purpose: str, value: str | bytes) -> list[str]:
        """The HMAC under every version, to search records written before a rotation."""
        return [self._hmac(purpose, v, value) for v in sorted(self._keys.get(purpose, {}))]

    def _hmac(self, purpose: str, version: int, value: str | bytes) -> str:
        data = value.encode() if isinstance(value, str) else value
        return f"v{version}:" + _hmac.new(self._keys[purpose][version], data, hashlib.sha256).hexdigest()

    # --- rotation ------------------------------------------------------------------------------------------
    async def rotate(self, purposes: list[str] | None = None, *, new_kek: bool = True) -> RotationReport:
        """New data-key versions for ``purposes`` (default: all), and every data key re-wrapped under the
        current (optionally new) KEK. Each step commits on its own; readers never see a gap."""
        await self.refresh()
        report = RotationReport(kek_id=self.kek.rotate() if new_kek else self.kek.current_id)
        for purpose in purposes or sorted(self._keys):
            while True:
                version = max(self._keys.get(purpose, {0: b""})) + 1
                if await self._add_version(purpose, version):
                    break
                await self.refresh()
            report.new_versions[purpose] = version
        report.rewrapped = await self.rewrap()
        await self.refresh()
        return report

    async def rewrap(self) -> int:
        """Re-wrap data keys that an older KEK wrapped; the data key (and so every ciphertext) is unchanged."""
        current = self.kek.current_id
        count = 0
        async with self.db.session() as s:
            rows = list((await s.execute(select(DataKey).where(DataKey.kek_id != current))).scalars())
        for row in rows:
            aad = _dek_aad(row.purpose, row.version)
            dek = await self.kek.unwrap(row.kek_id, row.wrapped, aad)
            kek_id, wrapped = await self.kek.wrap(dek, aad)
            async with self.db.session() as s:
                await s.execute(
                    update(DataKey)
                    .where(DataKey.id == row.id, DataKey.kek_id == row.kek_id)
                    .values(kek_id=kek_id, wrapped=wrapped)
                )
            count += 1
        return count
