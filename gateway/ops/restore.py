"""``palisade restore FILE``: check everything first, then bring the installation back, then audit it.

Order matters: (1) decrypt every chunk (AES-GCM authenticates each), unpack into a private staging folder and
verify the manifest's Ed25519 signature and every member's SHA-256 — a flipped byte anywhere is refused here;
(2) check the archive fits this installation: same database kind, a schema revision this code knows, and the
key-encryption key at hand actually unwraps every data key (the KEK is never in a backup: it must be restored
from escrow first); (3) refuse a database that already holds rows unless ``--force``. Only then is anything
written: the database, the audit head and pinned keys, the models file and artifacts. The schema is migrated to
this code's head, and the restore is recorded in the restored audit trail, whose chain continues from the last
record of the snapshot. The external head file in place before (which may vouch for records newer than the
backup) is kept beside the new one, renamed, as evidence of what the restore rolled back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from gateway.audit.chain import head_file_of
from gateway.audit.pins import keys_file_of, pin_key, read_pins
from gateway.ops import database
from gateway.ops.archive import BackupError, ChunkReader, check_manifest, decrypt_chunks, fingerprint
from gateway.settings import Settings

_MAX_MEMBERS = 1_000_000


@dataclass
class VerifiedArchive:
    """An archive whose signature and digests held, unpacked in ``staging``."""

    staging: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    signer: str

    def path(self, member: str) -> Path:
        return self.staging / member


@dataclass
class RestoreResult:
    database: str
    audit_last_seq: int
    artifacts_restored: int
    replaced_head_file: str | None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"database": self.database, "audit_last_seq": self.audit_last_seq,
                "artifacts_restored": self.artifacts_restored, "replaced_head_file": self.replaced_head_file,
                "notes": self.notes}


def _safe_name(name: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or name != p.as_posix():
        raise BackupError(f"the archive has an unsafe member name {name!r}")
    return name


def unpack_and_verify(source: BinaryIO, secret: bytes, staging: Path) -> VerifiedArchive:
    """Decrypt, unpack and verify; raises BackupError on any damage. Writes only inside ``staging``."""
    keys, chunks = decrypt_chunks(source, secret)
    digests: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(fileobj=ChunkReader(chunks), mode="r|") as tar:  # type: ignore[arg-type]
            for info in tar:
                name = _safe_name(info.name)
                if not info.isfile():
                    raise BackupError(f"the archive member {name!r} is not a regular file")
                if name in digests or len(digests) > _MAX_MEMBERS:
                    raise BackupError(f"the archive repeats the member {name!r}")
                dest = staging / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                h, size = hashlib.sha256(), 0
                src = tar.extractfile(info)
                assert src is not None  # noqa: S101 - a regular file always has a body
                with open(dest, "wb") as out:
                    while block := src.read(1 << 20):
                        h.update(block)
                        size += len(block)
                        out.write(block)
                digests[name] = {"sha256": h.hexdigest(), "size": size}
    except tarfile.TarError as exc:
        raise BackupError(f"the archive's contents are damaged: {exc}") from exc
    if "manifest.json" not in digests or "manifest.sig" not in digests:
        raise BackupError("the archive has no signed manifest")
    body = (staging / "manifest.json").read_bytes()
    manifest = check_manifest(keys, body, (staging / "manifest.sig").read_bytes())
    listed = manifest.get("members", {})
    present = {k: v for k, v in digests.items() if k not in ("manifest.json", "manifest.sig")}
    if set(listed) != set(present):
        extra, missing = sorted(set(present) - set(listed)), sorted(set(listed) - set(present))
        raise BackupError(f"the archive's members do not match its manifest (extra {extra}, missing {missing})")
    for name, want in listed.items():
        if present[name] != want:
            raise BackupError(f"member {name} does not match the SHA-256 in the signed manifest")
    return VerifiedArchive(staging, manifest, hashlib.sha256(body).hexdigest(), fingerprint(keys.public_key))


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    from gateway.db.migrate import alembic_config

    return {s.revision for s in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()}


def _check_kek(settings: Settings, archive: VerifiedArchive) -> None:
    """The KEK at hand must unwrap every data key in the archive; never creates a master key file."""
    from gateway.crypto.kek import MASTER_KEY_ENV, KeyringError, LocalKek
    from gateway.crypto.keyring import _dek_aad

    keys = json.loads(archive.path("keyring/wrapped-keys.json").read_bytes())["data_keys"]
    if not keys:
        return
    if not os.environ.get(MASTER_KEY_ENV) and not (settings.data_dir / "master.key").exists():
        raise BackupError(
            f"no key-encryption key here: restore the escrowed master.key to {settings.data_dir / 'master.key'} "
            f"or set {MASTER_KEY_ENV} before restoring (backups never hold it); "
            f"needs {sorted({k['kek_id'] for k in keys})}"
        )
    kek = LocalKek.from_env_or_file(settings.data_dir)

    async def check() -> None:
        for k in keys:
            try:
                await kek.unwrap(k["kek_id"], base64.b64decode(k["wrapped"]), _dek_aad(k["purpose"], k["version"]))
            except KeyringError as exc:
                raise BackupError(f"the key-encryption key at hand does not open data key {k['purpose']} "
                                  f"v{k['version']}: {exc}") from exc

    asyncio.run(check())


def preflight(settings: Settings, archive: VerifiedArchive, *, force: bool) -> None:
    """Everything that can refuse the restore, before anything is written."""
    db = archive.manifest["database"]
    if settings.is_sqlite != (db["kind"] == "sqlite"):
        raise BackupError(f"the archive holds a {db['kind']} database but PALISADE_DATABASE_URL is "
                          f"{'sqlite' if settings.is_sqlite else 'postgresql'}")
    if db.get("alembic_revision") and db["alembic_revision"] not in _known_revisions():
        raise BackupError(f"the archive's schema revision {db['alembic_revision']} is newer than this code; "
                          "upgrade Palisade first, then restore")
    _check_kek(settings, archive)
    busy = database.nonempty_tables(settings.database_url)
    if busy and not force:
        raise BackupError(f"the database is not empty ({', '.join(busy[:5])}{'…' if len(busy) > 5 else ''} hold "
                          "rows); restore into an empty database, or pass --force to replace it")


def _write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".restoring")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def apply(settings: Settings, archive: VerifiedArchive) -> RestoreResult:
    """Write the verified archive into this installation (preflight has passed)."""
    from gateway.db.migrate import upgrade

    manifest = archive.manifest
    db = manifest["database"]
    database.restore(settings.database_url, db["member"], archive.path(db["member"]))
    result = RestoreResult(database=db["kind"], audit_last_seq=int(db["audit_last_seq"]), artifacts_restored=0,
                           replaced_head_file=None)

    head = head_file_of(settings)
    if head.exists() and head.stat().st_size:
        aside = head.with_name(f"{head.name}.before-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        os.replace(head, aside)
        result.replaced_head_file = str(aside)
    _write_file(head, archive.path("audit/audit-head.jsonl").read_bytes())
    pins_file = keys_file_of(settings)
    for key in read_pins(archive.path("audit/audit-keys.jsonl")).keys.values():
        pin_key(pins_file, key)  # append-only: keys pinned here already stay
    if "config/models.yaml" in manifest["members"]:
        target = settings.data_dir / "restored" / "models.yaml"
        _write_file(target, archive.path("config/models.yaml").read_bytes())
        result.notes.append(f"models file restored to {target}; point PALISADE_MODELS_FILE at it if needed")
    for name in manifest["members"]:
        if name.startswith("artifacts/files/"):
            rel = name[len("artifacts/files/"):]
            target = settings.data_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive.path(name), target)
            result.artifacts_restored += 1
    if not manifest.get("with_artifacts"):
        result.notes.append("artifacts were not in this archive (made without --with-artifacts); "
                            "artifacts/manifest.json lists what to bring back and their SHA-256")
    upgrade(settings)  # an archive from an older release is migrated to this code's schema
    return result


def restore_archive(settings: Settings, source: Path, secret: bytes, *, force: bool = False) -> tuple[
        VerifiedArchive, RestoreResult]:
    if not source.is_file():
        raise BackupError(f"no archive at {source}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=settings.data_dir) as tmp, open(source, "rb") as f:
        staging = Path(tmp)
        os.chmod(staging, 0o700)
        archive = unpack_and_verify(f, secret, staging)
        preflight(settings, archive, force=force)
        return archive, apply(settings, archive)
