"""Encrypted file bodies on disk: chunked AES-256-GCM under the keyring's "batches" data key.

A file is a sequence of records ``len (4 bytes, big endian) | keyring blob``; chunk ``i`` is bound (AAD) to the
file id and its index, so chunks cannot be reordered, swapped between files or dropped in the middle, and the
chunk count kept in the database catches a file cut short. Plaintext never touches the disk, not even in a
temporary file: uploads are encrypted chunk by chunk as they stream in, and reads decrypt chunk by chunk.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from gateway.crypto.kek import KeyringError

PURPOSE = "batches"
CHUNK = 256 * 1024  # plaintext bytes per encrypted chunk
_LEN = struct.Struct(">I")


class StorageError(Exception):
    """A stored file is missing, truncated or does not open (tampered)."""


class FileStore:
    def __init__(self, root: Path, keyring: Any) -> None:
        self.root = root
        self.keyring = keyring
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, file_id: str) -> Path:
        if not file_id.replace("-", "").replace("_", "").isalnum():
            raise StorageError("bad file id")
        return self.root / f"{file_id}.enc"

    def writer(self, file_id: str) -> ChunkWriter:
        return ChunkWriter(self, file_id)

    def _seal(self, file_id: str, index: int, data: bytes) -> bytes:
        return self.keyring.encrypt(data, table="batch_files", row=f"{file_id}:{index}", field="content",
                                    purpose=PURPOSE)

    def chunks(self, file_id: str, count: int) -> Iterator[bytes]:
        """Plaintext chunks of a stored file, checked against the chunk count recorded for it."""
        try:
            fh = open(self.path(file_id), "rb")  # noqa: SIM115
        except FileNotFoundError as exc:
            raise StorageError(f"file {file_id} is missing from storage") from exc
        with fh:
            for index in range(count):
                head = fh.read(_LEN.size)
                if len(head) != _LEN.size:
                    raise StorageError(f"file {file_id} is truncated")
                (size,) = _LEN.unpack(head)
                blob = fh.read(size)
                if len(blob) != size:
                    raise StorageError(f"file {file_id} is truncated")
                try:
                    yield self.keyring.decrypt(blob, table="batch_files", row=f"{file_id}:{index}",
                                               field="content", purpose=PURPOSE)
                except KeyringError as exc:
                    raise StorageError(f"file {file_id} does not open (tampered or moved)") from exc
            if fh.read(1):
                raise StorageError(f"file {file_id} has data after its last chunk")

    async def achunks(self, file_id: str, count: int) -> AsyncIterator[bytes]:
        """``chunks`` for async callers (a data-key version created since start is loaded first)."""
        await self.keyring.refresh()
        for chunk in self.chunks(file_id, count):
            yield chunk

    def lines(self, file_id: str, count: int) -> Iterator[bytes]:
        """The file's lines (without the newline), decrypted as they are read."""
        rest = b""
        for chunk in self.chunks(file_id, count):
            rest += chunk
            *full, rest = rest.split(b"\n")
            yield from full
        if rest:
            yield rest

    def delete(self, file_id: str) -> None:
        try:
            os.unlink(self.path(file_id))
        except FileNotFoundError:
            pass


class ChunkWriter:
    """Encrypts bytes into a new stored file as they arrive; counts bytes and lines for the file object."""

    def __init__(self, store: FileStore, file_id: str) -> None:
        self.store = store
        self.file_id = file_id
        self.path = store.path(file_id)
        self._tmp = self.path.with_suffix(".part")
        self._fh = open(self._tmp, "wb")  # noqa: SIM115
        os.chmod(self._tmp, 0o600)
        self._buf = bytearray()
        self.bytes = 0
        self.newlines = 0
        self.chunks = 0
        self._last = b"\n"

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.bytes += len(data)
        self.newlines += data.count(b"\n")
        self._last = data[-1:]
        self._buf += data
        while len(self._buf) >= CHUNK:
            self._flush(bytes(self._buf[:CHUNK]))
            del self._buf[:CHUNK]

    @property
    def lines(self) -> int:
        return self.newlines + (0 if self._last == b"\n" else 1)

    def _flush(self, data: bytes) -> None:
        blob = self.store._seal(self.file_id, self.chunks, data)
        self._fh.write(_LEN.pack(len(blob)) + blob)
        self.chunks += 1

    def close(self) -> None:
        """Seal the last chunk, fsync and move the file into place (a crash leaves only a ``.part``)."""
        if self._buf:
            self._flush(bytes(self._buf))
            self._buf.clear()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
