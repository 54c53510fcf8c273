"""Key-encryption keys (KEK) behind a small KMS-style interface, so a cloud KMS can replace the local one.

The local KEK comes from ``PALISADE_MASTER_KEY`` (base64 of 32 bytes; several comma-separated keys = the first is
current, the others still unwrap, which is how an operator rotates an environment KEK) or, in embedded mode, from
``<data_dir>/master.key`` (created 0600 on first use; one base64 key per line, the last line is current; rotation
appends a line). A KEK is named by its fingerprint, so the database says which KEK wrapped each data key without
ever holding it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_ENV = "PALISADE_MASTER_KEY"
NONCE_BYTES = 12


class KeyringError(Exception):
    """A key is missing, malformed or does not open a ciphertext."""


class KeyEncryptionKey(Protocol):
    """What a KMS offers: wrap and unwrap small secrets (data keys) under a key the caller never sees."""

    @property
    def current_id(self) -> str: ...

    async def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """Encrypt under the current KEK; returns (kek id, wrapped bytes)."""

    async def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Decrypt bytes wrapped by the KEK ``kek_id``; raise KeyringError if it is unknown or the data is bad."""

    def rotate(self) -> str:
        """Make a new current KEK version and return its id (or raise KeyringError where the operator must)."""


def _fingerprint(key: bytes) -> str:
    return "local:" + hashlib.sha256(b"palisade-kek|" + key).hexdigest()[:16]


def _decode(raw: str, where: str) -> bytes:
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except ValueError as exc:
        raise KeyringError(f"{where}: not valid base64") from exc
    if len(key) != 32:
        raise KeyringError(f"{where}: a master key is 32 bytes (base64 of 32 random bytes), got {len(key)}")
    return key


class LocalKek:
    """AES-256-GCM key wrapping with keys from the environment or a 0600 file."""

    def __init__(self, keys: list[bytes], *, path: Path | None = None) -> None:
        if not keys:
            raise KeyringError("no master key")
        self._current = keys[0]
        self._keys = {_fingerprint(k): k for k in keys}
        self._path = path  # None = the environment holds the keys (rotation is the operator's job)

    @classmethod
    def from_env_or_file(cls, data_dir: Path) -> LocalKek:
        raw = os.environ.get(MASTER_KEY_ENV, "").strip()
        if raw:
            return cls([_decode(part, MASTER_KEY_ENV) for part in raw.split(",") if part.strip()])
        path = data_dir / "master.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            _create_whole(path, (base64.b64encode(secrets.token_bytes(32)).decode() + "\n").encode())
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if not lines:
            raise KeyringError(f"{path} is empty")
        keys = [_decode(ln, str(path)) for ln in lines]
        return cls(list(reversed(keys)), path=path)  # newest (last line) first

    @property
    def current_id(self) -> str:
        return _fingerprint(self._current)

    async def wrap(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return self.current_id, nonce + AESGCM(self._current).encrypt(nonce, plaintext, aad)

    async def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        key = self._keys.get(kek_id)
        if key is None:
            raise KeyringError(f"unknown key-encryption key {kek_id}; is the right PALISADE_MASTER_KEY set?")
        try:
            return AESGCM(key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
        except Exception as exc:
            raise KeyringError(f"data key wrapped by {kek_id} does not open") from exc

    def rotate(self) -> str:
        if self._path is None:
            raise KeyringError(
                f"the master key comes from {MASTER_KEY_ENV}: put a new key first in that variable "
                "(keep the old one after a comma), restart, then run `palisade keys rotate`"
            )
        new = secrets.token_bytes(32)
        with open(self._path, "a") as f:  # append-only: old KEK versions stay usable until nothing needs them
            f.write(base64.b64encode(new).decode() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._keys[_fingerprint(new)] = new
        self._current = new
        return self.current_id


def _create_whole(path: Path, content: bytes) -> None:
    """Create ``path`` (0600) holding ``content``, unless it exists. Written and synced under a private name, then
    hard-linked into place: two processes starting at once on a fresh data dir cannot both create it (and disagree
    on the master key), and neither can ever read it half written (the loser of the race reads the winner's)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
