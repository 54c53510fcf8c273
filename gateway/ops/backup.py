"""``palisade backup``: one encrypted, signed archive of everything needed to bring an installation back.

Members (the manifest lists each with its SHA-256 and size, and is signed last):

- ``database/sqlite.db`` or ``database/postgres.dump``: a consistent online snapshot (gateway.ops.database), which
  holds principals, keys (hashed), policies, limits, the model registry, dataset and run metadata, the audit trail
  and the keyring's data keys, each still wrapped by the key-encryption key
- ``keyring/wrapped-keys.json``: those wrapped data keys and the KEK ids they need (the KEK itself is never here)
- ``audit/audit-head.jsonl`` (cut to the snapshot's last record) and ``audit/audit-keys.jsonl`` (pinned keys)
- ``config/models.yaml``: the models file, when one is configured
- ``artifacts/manifest.json``: path, size and SHA-256 of every artifact and shard; the files themselves under
  ``artifacts/files/`` with ``--with-artifacts``
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.chain import head_file_of
from gateway.audit.pins import keys_file_of
from gateway.ops import database
from gateway.ops.archive import EncryptingWriter, canonical, fingerprint, public_key_b64, sign_manifest
from gateway.settings import Settings

#: folders of the data dir that hold artifacts (model versions, dataset shards, run checkpoints, batch files)
ARTIFACT_DIRS = ("artifacts", "models", "datasets", "runs", "files")
FORMAT = 1


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    members: int
    manifest_sha256: str
    signer: str  # fingerprint of the manifest's Ed25519 key
    audit_last_seq: int
    database: str

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "size": self.size, "members": self.members,
                "manifest_sha256": self.manifest_sha256, "signer": self.signer,
                "audit_last_seq": self.audit_last_seq, "database": self.database}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def head_lines_upto(path: Path, last_seq: int) -> bytes:
    """The external head file's lines that vouch for records the snapshot holds (each line is signed alone, so
    dropping later lines keeps the rest valid; lines past the snapshot would read as a truncated trail)."""
    if not path.exists():
        return b""
    keep = []
    for raw in path.read_text().splitlines():
        try:
            if int(json.loads(raw)["seq"]) <= last_seq:
                keep.append(raw)
        except (ValueError, KeyError, TypeError):
            keep.append(raw)  # malformed lines stay: verify names them, a backup does not hide them
    return ("\n".join(keep) + "\n").encode() if keep else b""


def artifact_files(data_dir: Path) -> list[tuple[str, Path]]:
    out = []
    for top in ARTIFACT_DIRS:
        root = data_dir / top
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in sorted(files):
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    out.append((p.relative_to(data_dir).as_posix(), p))
    return sorted(out)


class _Members:
    """Adds members to the tar stream and remembers their digests for the manifest."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar, self.entries = tar, {}

    def add_bytes(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
        self.tar.addfile(info, io.BytesIO(data))
        self.entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def add_file(self, name: str, path: Path) -> None:
        digest = _sha256_file(path)  # read twice (hash, then tar): the manifest is signed after the members
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = path.stat().st_size, int(path.stat().st_mtime), 0o600
        with open(path, "rb") as f:
            self.tar.addfile(info, f)
        self.entries[name] = {"sha256": digest, "size": info.size}


def create_backup(settings: Settings, out: Path, secret: bytes, *, with_artifacts: bool = False) -> BackupResult:
    """Write the archive to ``out`` (via a temporary file renamed at the end: a failed backup leaves nothing)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="palisade-backup-") as tmp:
        member, dump, facts = database.snapshot(settings.database_url, Path(tmp))
        partial = out.with_name(out.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw:
                writer = EncryptingWriter(raw, secret)
                with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[arg-type]
                    members = _Members(tar)
                    members.add_file(member, dump)
                    members.add_bytes("keyring/wrapped-keys.json", canonical(
                        {"kek_ids": facts.kek_ids, "data_keys": facts.data_keys}))
                    # after the snapshot: the pins are a superset, the head file is cut back to the snapshot
                    members.add_bytes("audit/audit-head.jsonl",
                                      head_lines_upto(head_file_of(settings), facts.audit_last_seq))
                    pins = keys_file_of(settings)
                    members.add_bytes("audit/audit-keys.jsonl", pins.read_bytes() if pins.exists() else b"")
                    if settings.models_file is not None and settings.models_file.is_file():
                        members.add_file("config/models.yaml", settings.models_file)
                    listing = []
                    for rel, path in artifact_files(settings.data_dir):
                        listing.append({"path": rel, "size": path.stat().st_size, "sha256": _sha256_file(path)})
                        if with_artifacts:
                            members.add_file(f"artifacts/files/{rel}", path)
                    members.add_bytes("artifacts/manifest.json", canonical({"files": listing}))
                    manifest = {
                        "format": FORMAT,
                        "created_at": datetime.now(UTC).isoformat(),
                        "database": {"kind": facts.kind, "member": member, "alembic_revision": facts.alembic_revision,
                                     "audit_last_seq": facts.audit_last_seq,
                                     "audit_last_hash": facts.audit_last_hash},
                        "kek_ids": facts.kek_ids,
                        "with_artifacts": with_artifacts,
                        "members": members.entries,
                    }
                    body, signature = sign_manifest(writer.keys, manifest)
                    members.tar.addfile(_info("manifest.json", len(body)), io.BytesIO(body))
                    members.tar.addfile(_info("manifest.sig", len(signature)), io.BytesIO(signature))
                writer.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return BackupResult(path=out, size=out.stat().st_size, members=len(manifest["members"]),
                        manifest_sha256=hashlib.sha256(body).hexdigest(), signer=fingerprint(writer.keys.public_key),
                        audit_last_seq=facts.audit_last_seq, database=facts.kind)


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(time.time()), 0o600
    return info


__all__ = ["ARTIFACT_DIRS", "BackupResult", "create_backup", "public_key_b64"]
