"""The backup container: AES-256-GCM in authenticated chunks, keyed from a secret only the operator holds.

Layout of a ``.palisade-backup`` file::

    MAGIC | u32 header length | header (canonical JSON) | chunk* ;  chunk = u32 length | AES-GCM ciphertext+tag

The header names the key derivation (HKDF-SHA256 for a 32-byte random key, scrypt for a passphrase), its salt,
a random nonce prefix and the manifest signer's Ed25519 public key; it is authenticated as every chunk's AAD.
Chunk ``i`` is sealed under nonce ``prefix(7) | i(4) | last(1)`` (the STREAM construction), so a flipped, dropped,
reordered or truncated chunk fails to open and nothing of a damaged archive is ever used.

The operator's secret comes from ``PALISADE_BACKUP_KEY`` (base64 of 32 random bytes, or a passphrase) or from a
file (``PALISADE_BACKUP_KEY_FILE`` / ``--key-file``). Two keys are derived from it per archive: the AES key and an
Ed25519 signing key for the manifest, whose public half is printed and audited so an archive can be tied to the
backup event that made it. It is never the keyring's key-encryption key, which is escrowed separately.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"PALISADE-BACKUP\x00v1\n"
CHUNK = 1 << 20
BACKUP_KEY_ENV = "PALISADE_BACKUP_KEY"
_U32 = struct.Struct(">I")
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}  # ~0.1 s, 32 MiB: a passphrase costs an attacker as much per guess


class BackupError(Exception):
    """The archive cannot be made or opened: no key, wrong key, damaged or tampered with."""


def load_backup_secret(key_file: Path | None) -> bytes:
    """The operator's backup secret: the file if given, else ``PALISADE_BACKUP_KEY``."""
    if key_file is not None:
        try:
            raw = key_file.read_text().strip()
        except OSError as exc:
            raise BackupError(f"cannot read the backup key file {key_file}: {exc.strerror}") from exc
    else:
        raw = os.environ.get(BACKUP_KEY_ENV, "").strip()
    if not raw:
        raise BackupError(
            f"no backup key: set {BACKUP_KEY_ENV} (e.g. `openssl rand -base64 32`) or PALISADE_BACKUP_KEY_FILE / "
            "--key-file; keep it apart from the backups and from the master key"
        )
    return raw.encode()


def _random_key(secret: bytes) -> bytes | None:
    try:
        key = base64.b64decode(secret, validate=True)
    except ValueError:
        return None
    return key if len(key) == 32 else None


def _kdf_params(secret: bytes) -> dict:
    salt = base64.b64encode(secrets.token_bytes(16)).decode()
    if _random_key(secret) is not None:
        return {"name": "hkdf-sha256", "salt": salt}
    if len(secret) < 12:
        raise BackupError("a backup passphrase needs at least 12 characters (or use 32 random bytes, base64)")
    return {"name": "scrypt", "salt": salt, **_SCRYPT}


def _root_key(secret: bytes, kdf: dict) -> bytes:
    salt = base64.b64decode(kdf["salt"])
    if kdf.get("name") == "hkdf-sha256":
        key = _random_key(secret)
        if key is None:
            raise BackupError("this archive was made with a 32-byte random backup key; the key given is not one")
        return key
    if kdf.get("name") == "scrypt":
        return Scrypt(salt=salt, length=32, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"])).derive(secret)
    raise BackupError(f"unknown key derivation {kdf.get('name')!r}")


def _derive(root: bytes, salt: bytes, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info.encode()).derive(root)


@dataclass(frozen=True)
class ArchiveKeys:
    aead: AESGCM
    signer: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signer.public_key()

    @classmethod
    def derive(cls, secret: bytes, kdf: dict) -> ArchiveKeys:
        root, salt = _root_key(secret, kdf), base64.b64decode(kdf["salt"])
        return cls(
            aead=AESGCM(_derive(root, salt, "palisade-backup|aes-256-gcm")),
            signer=Ed25519PrivateKey.from_private_bytes(_derive(root, salt, "palisade-backup|ed25519-manifest")),
        )


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def fingerprint(key: Ed25519PublicKey) -> str:
    return "ed25519:" + hashlib.sha256(base64.b64decode(public_key_b64(key))).hexdigest()[:16]


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + _U32.pack(index) + (b"\x01" if last else b"\x00")


class EncryptingWriter:
    """A write-only file object: bytes written are sealed chunk by chunk into ``out``. ``close`` seals the last."""

    def __init__(self, out: BinaryIO, secret: bytes) -> None:
        kdf = _kdf_params(secret)
        self.keys = ArchiveKeys.derive(secret, kdf)
        self._prefix = secrets.token_bytes(7)
        header = canonical({"format": 1, "kdf": kdf, "nonce_prefix": base64.b64encode(self._prefix).decode(),
                            "chunk": CHUNK, "signer": public_key_b64(self.keys.public_key)})
        self._aad = hashlib.sha256(MAGIC + header).digest()
        out.write(MAGIC + _U32.pack(len(header)) + header)
        self._out, self._buf, self._index, self._closed = out, bytearray(), 0, False

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) > CHUNK:  # keep at least one byte back: the last chunk must be sealed as last
            self._seal(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        return len(data)

    def _seal(self, plain: bytes, *, last: bool) -> None:
        sealed = self.keys.aead.encrypt(_nonce(self._prefix, self._index, last), plain, self._aad)
        self._out.write(_U32.pack(len(sealed)) + sealed)
        self._index += 1

    def flush(self) -> None:  # tarfile calls it; chunks are sealed on size or close
        pass

    def close(self) -> None:
        if not self._closed:
            self._seal(bytes(self._buf), last=True)
            self._buf.clear()
            self._closed = True


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BackupError("the archive is truncated")
    return data


def read_header(f: BinaryIO) -> tuple[dict, bytes]:
    if f.read(len(MAGIC)) != MAGIC:
        raise BackupError("not a Palisade backup archive (bad magic)")
    (length,) = _U32.unpack(_read_exact(f, 4))
    if length > 65536:
        raise BackupError("the archive header is damaged")
    raw = _read_exact(f, length)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise BackupError("the archive header is damaged") from exc
    return header, hashlib.sha256(MAGIC + raw).digest()


def decrypt_chunks(f: BinaryIO, secret: bytes) -> tuple[ArchiveKeys, Iterator[bytes]]:
    """Open the header and return the keys and an iterator of plaintext chunks; any damage raises BackupError."""
    header, aad = read_header(f)
    if header.get("format") != 1:
        raise BackupError(f"unsupported archive format {header.get('format')!r}")
    try:
        keys = ArchiveKeys.derive(secret, header["kdf"])
        prefix = base64.b64decode(header["nonce_prefix"])
    except (KeyError, ValueError, TypeError) as exc:
        raise BackupError("the archive header is damaged") from exc
    if public_key_b64(keys.public_key) != header.get("signer"):
        raise BackupError("the backup key does not match this archive (wrong key, or the header was altered)")

    def chunks() -> Iterator[bytes]:
        index = 0
        while True:
            raw_len = f.read(4)
            if len(raw_len) < 4:
                raise BackupError("the archive is truncated (no final chunk)")
            (length,) = _U32.unpack(raw_len)
            if length > CHUNK + 16:
                raise BackupError(f"chunk {index} is damaged (bad length)")
            sealed = _read_exact(f, length)
            for last in (False, True):
                try:
                    plain = keys.aead.decrypt(_nonce(prefix, index, last), sealed, aad)
                except InvalidTag:
                    continue
                yield plain
                if last:
                    if f.read(1):
                        raise BackupError("the archive has data after its final chunk")
                    return
                break
            else:
                raise BackupError(f"chunk {index} does not authenticate: the archive is damaged or tampered with")
            index += 1

    return keys, chunks()


class ChunkReader:
    """A read-only file object over decrypted chunks, for ``tarfile.open(fileobj=..., mode="r|")``."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buf = chunks, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def sign_manifest(keys: ArchiveKeys, manifest: dict) -> tuple[bytes, bytes]:
    body = canonical(manifest)
    return body, base64.b64encode(keys.signer.sign(b"palisade-backup-manifest\n" + body))


def check_manifest(keys: ArchiveKeys, body: bytes, signature: bytes) -> dict:
    from cryptography.exceptions import InvalidSignature

    try:
        keys.public_key.verify(base64.b64decode(signature), b"palisade-backup-manifest\n" + body)
    except (InvalidSignature, ValueError) as exc:
        raise BackupError("the manifest signature does not verify") from exc
    return json.loads(body)
