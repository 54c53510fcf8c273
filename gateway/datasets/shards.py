"""Immutable, content-addressed, encrypted shards and the manifest that lists them.

A shard is a batch of records as JSON lines (or a packed token array), sealed with AES-256-GCM under the
keyring's ``datasets`` data key (envelope encryption; the AAD binds version id and shard name, so a shard copied
into another version does not open) and stored under ``<version>/objects/<sha256 of the ciphertext>``. Reading
checks the sha256 before decrypting. The manifest lists every shard; its canonical sha256 is the version's
content digest, which an approval is bound to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.datasets.storage import ObjectStore, StorageError

Record = dict[str, Any]


class Sealer(Protocol):
    def seal(self, data: bytes, name: str) -> bytes: ...
    def open(self, blob: bytes, name: str) -> bytes: ...


class KeyringSealer:
    """Seals with ``gateway.crypto.Keyring`` (purpose ``datasets``), bound to one dataset version."""

    PURPOSE = "datasets"

    def __init__(self, keyring: Any, version_id: str) -> None:
        self.keyring = keyring
        self.version_id = version_id

    def seal(self, data: bytes, name: str) -> bytes:
        return self.keyring.encrypt(data, table="dataset_versions", row=self.version_id, field=f"shard:{name}",
                                    purpose=self.PURPOSE)

    def open(self, blob: bytes, name: str) -> bytes:
        return self.keyring.decrypt(blob, table="dataset_versions", row=self.version_id, field=f"shard:{name}",
                                    purpose=self.PURPOSE)


@dataclass
class Manifest:
    version: str
    shards: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps({"version": self.version, "shards": self.shards}, sort_keys=True,
                          separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        return cls(version=raw["version"], shards=raw["shards"])

    def of(self, split: str) -> list[dict[str, Any]]:
        return [s for s in self.shards if s["split"] == split]


class ShardWriter:
    """Buffers records of one split and writes a sealed shard every ``max_records`` / ``max_bytes``."""

    def __init__(self, store: ObjectStore, sealer: Sealer, manifest: Manifest, split: str,
                 max_records: int = 10_000, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.store, self.sealer, self.manifest, self.split = store, sealer, manifest, split
        self.max_records, self.max_bytes = max_records, max_bytes
        self._buf: list[bytes] = []
        self._size = 0
        self.records = 0

    def add(self, record: Record) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        self._buf.append(line)
        self._size += len(line)
        self.records += 1
        if len(self._buf) >= self.max_records or self._size >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        put_shard(self.store, self.sealer, self.manifest, self.split, "jsonl", b"".join(self._buf), len(self._buf))
        self._buf, self._size = [], 0


def put_shard(store: ObjectStore, sealer: Sealer, manifest: Manifest, split: str, kind: str, data: bytes,
              records: int, **extra: Any) -> dict[str, Any]:
    name = f"{split}-{sum(1 for s in manifest.shards if s['split'] == split):05d}"
    blob = sealer.seal(data, name)
    sha = hashlib.sha256(blob).hexdigest()
    key = f"{manifest.version}/objects/{sha}"
    if not store.exists(key):
        store.put(key, blob)
    entry = {"name": name, "split": split, "kind": kind, "sha256": sha, "records": records, "bytes": len(blob),
             **extra}
    manifest.shards.append(entry)
    return entry


def read_shard(store: ObjectStore, sealer: Sealer, manifest: Manifest, entry: dict[str, Any]) -> bytes:
    blob = store.get(f"{manifest.version}/objects/{entry['sha256']}")
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise StorageError(f"shard {entry['name']} does not match its digest")
    return sealer.open(blob, entry["name"])


def iter_split(store: ObjectStore, sealer: Sealer, manifest: Manifest, split: str) -> Iterator[Record]:
    """Records of one split, shard by shard (one shard in memory at a time)."""
    for entry in manifest.of(split):
        if entry["kind"] != "jsonl":
            continue
        for line in read_shard(store, sealer, manifest, entry).splitlines():
            yield json.loads(line)
