"""Encrypted uploads: an uploaded dataset file never touches the disk in clear.

The API and CLI stream the file into :class:`UploadWriter`, which seals 1 MiB chunks with the keyring
(purpose ``datasets``; the AAD binds upload id and chunk number, and the last chunk is sealed as last, so
reordering, splicing or truncation do not open). The worker reads it back through :class:`UploadReader`, a
seekable binary stream (zip files need seeking) that decrypts one chunk at a time. The upload is deleted when
its pipeline job ends.

File layout: ``PDSU1`` then, per chunk, a 4-byte big-endian length and the keyring blob.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any

MAGIC = b"PDSU1"
CHUNK = 1024 * 1024
_LEN = struct.Struct(">I")


class UploadTooLarge(ValueError):
    pass


def _aad_field(index: int, last: bool) -> str:
    return f"chunk:{index}:{'last' if last else 'more'}"


class UploadWriter:
    """``write(bytes)`` any number of times, then ``close()``; ``size`` is the plaintext size so far."""

    def __init__(self, path: Path, keyring: Any, upload_id: str, max_bytes: int | None = None) -> None:
        self.path, self.keyring, self.upload_id, self.max_bytes = Path(path), keyring, upload_id, max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fh = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._fh.write(MAGIC)
        self._buf = bytearray()
        self._index = 0
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise UploadTooLarge(f"upload larger than {self.max_bytes} bytes")
        self._buf += data
        while len(self._buf) > CHUNK:  # keep at least one byte back: the last chunk is sealed as last
            self._emit(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]

    def _emit(self, chunk: bytes, last: bool) -> None:
        blob = self.keyring.encrypt(chunk, table="dataset_uploads", row=self.upload_id,
                                    field=_aad_field(self._index, last), purpose="datasets")
        self._fh.write(_LEN.pack(len(blob)) + blob)
        self._index += 1

    def close(self) -> None:
        if self._fh.closed:
            return
        self._emit(bytes(self._buf), last=True)
        self._buf = bytearray()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


class UploadReader(io.RawIOBase):
    """A seekable, read-only plaintext view of an encrypted upload."""

    def __init__(self, path: Path, keyring: Any, upload_id: str) -> None:
        super().__init__()
        self.keyring, self.upload_id = keyring, upload_id
        self._fh = open(path, "rb")  # noqa: SIM115 (closed in close())
        if self._fh.read(len(MAGIC)) != MAGIC:
            self._fh.close()
            raise ValueError("not an encrypted upload")
        self._chunks: list[tuple[int, int]] = []  # (file offset of blob, blob length)
        while True:
            head = self._fh.read(_LEN.size)
            if not head:
                break
            (n,) = _LEN.unpack(head)
            self._chunks.append((self._fh.tell(), n))
            self._fh.seek(n, io.SEEK_CUR)
        if not self._chunks:
            raise ValueError("empty upload file")
        self._overhead = 4 + 1 + 12 + 16  # keyring blob header + nonce + tag
        self._size = sum(n - self._overhead for _, n in self._chunks)
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def _chunk(self, index: int) -> bytes:
        if self._cached and self._cached[0] == index:
            return self._cached[1]
        offset, n = self._chunks[index]
        self._fh.seek(offset)
        blob = self._fh.read(n)
        data = self.keyring.decrypt(blob, table="dataset_uploads", row=self.upload_id,
                                    field=_aad_field(index, index == len(self._chunks) - 1), purpose="datasets")
        self._cached = (index, data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        if self._pos >= self._size:
            return 0
        index, within = divmod(self._pos, CHUNK)
        data = self._chunk(index)[within:within + len(b)]
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def open_upload(path: Path, keyring: Any, upload_id: str) -> io.BufferedReader:
    return io.BufferedReader(UploadReader(path, keyring, upload_id), buffer_size=256 * 1024)
