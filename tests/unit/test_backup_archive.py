"""The backup container: round trip, and every kind of damage refused (flipped byte, truncation, wrong key)."""

from __future__ import annotations

import base64
import io
import secrets

import pytest

from gateway.ops.archive import (
    CHUNK,
    BackupError,
    ChunkReader,
    EncryptingWriter,
    check_manifest,
    decrypt_chunks,
    sign_manifest,
)

KEY = base64.b64encode(secrets.token_bytes(32))


def _seal(data: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    w = EncryptingWriter(out, key)
    for i in range(0, len(data), 70_000):
        w.write(data[i:i + 70_000])
    w.close()
    return out.getvalue()


def _open(blob: bytes, key: bytes = KEY) -> bytes:
    _keys, chunks = decrypt_chunks(io.BytesIO(blob), key)
    return ChunkReader(chunks).read()


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_round_trip(size):
    data = secrets.token_bytes(size)
    blob = _seal(data)
    assert size < 16 or data[:16] not in blob
    assert _open(blob) == data


def test_passphrase_uses_scrypt_and_round_trips():
    phrase = b"correct horse battery staple"
    blob = _seal(b"hello", phrase)
    assert b"scrypt" in blob[:300]
    assert _open(blob, phrase) == b"hello"
    with pytest.raises(BackupError, match="at least 12"):
        _seal(b"x", b"short")


def test_every_flipped_byte_is_refused():
    blob = bytearray(_seal(secrets.token_bytes(2 * CHUNK + 5)))
    # magic, header, each chunk's length and body, the last tag byte
    for pos in [0, 25, 60, 120, 300, CHUNK // 2, CHUNK + 200, 2 * CHUNK + 100, len(blob) - 1]:
        damaged = bytearray(blob)
        damaged[pos] ^= 0x01
        with pytest.raises(BackupError):
            _open(bytes(damaged))


def test_truncated_or_extended_archive_is_refused():
    blob = _seal(secrets.token_bytes(2 * CHUNK + 5))
    cut_after_first_chunk = blob[: blob.index(b"\n", 0) + 1]  # just the magic
    for bad in (blob[:-1], blob[: len(blob) // 2], cut_after_first_chunk, blob + b"\x00"):
        with pytest.raises(BackupError):
            _open(bad)


def test_chunks_cannot_be_dropped_at_a_chunk_boundary():
    """Dropping the final chunk leaves a well-formed prefix; it must not pass as a whole archive."""
    blob = _seal(secrets.token_bytes(2 * CHUNK + 5))
    head_end = blob.index(b"}") + 1
    body = blob[head_end:]
    two_chunks = body[: 2 * (4 + CHUNK + 16)]
    with pytest.raises(BackupError, match="truncated|final"):
        _open(blob[:head_end] + two_chunks)


def test_wrong_key_is_refused_before_any_chunk():
    blob = _seal(b"data")
    with pytest.raises(BackupError, match="does not match"):
        _open(blob, base64.b64encode(secrets.token_bytes(32)))


def test_manifest_signature():
    out = io.BytesIO()
    w = EncryptingWriter(out, KEY)
    body, sig = sign_manifest(w.keys, {"members": {"a": {"sha256": "00", "size": 1}}})
    assert check_manifest(w.keys, body, sig)["members"]["a"]["size"] == 1
    with pytest.raises(BackupError, match="signature"):
        check_manifest(w.keys, body.replace(b"1", b"2"), sig)
