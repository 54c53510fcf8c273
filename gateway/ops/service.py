"""Backups as audited operations: the CLI and the scheduled Celery task both call these.

A backup is recorded in the live trail after the archive is complete (its manifest digest and signer fingerprint
tie the file to the event); a restore is recorded in the restored trail, so the chain goes on from the snapshot's
last record. Scheduled backups keep the newest ``backup_keep`` archives and record what they pruned.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.events import AuditEvent, Tag
from gateway.authn.principal import Principal
from gateway.context import RequestContext
from gateway.ops.archive import load_backup_secret
from gateway.ops.backup import BackupResult, create_backup
from gateway.ops.restore import RestoreResult, VerifiedArchive, restore_archive
from gateway.settings import Settings

SUFFIX = ".palisade-backup"
#: who the scheduled backups act as (the Celery beat schedule, configured by the operator)
SCHEDULE_PRINCIPAL = Principal(id="system:backup-schedule", kind="user", name="backup schedule", auth_method="cli")


async def _record(settings: Settings, event: AuditEvent) -> None:
    from gateway.audit.chain import record_once
    from gateway.db.session import Database

    db = Database(settings)
    try:
        await record_once(settings, db, event)
    finally:
        await db.close()


def backup(settings: Settings, out: Path, *, ctx: RequestContext, with_artifacts: bool = False,
           key_file: Path | None = None, pruned: list[str] | None = None) -> BackupResult:
    secret = load_backup_secret(key_file or settings.backup_key_file)
    result = create_backup(settings, out, secret, with_artifacts=with_artifacts)
    details: dict[str, Any] = {**result.summary(), "with_artifacts": with_artifacts}
    if pruned:
        details["pruned"] = pruned
    asyncio.run(_record(settings, AuditEvent.of(ctx, Tag.BACKUP_CREATE, target=f"backup:{out.name}", **details)))
    return result


def restore(settings: Settings, source: Path, *, ctx: RequestContext, force: bool = False,
            key_file: Path | None = None) -> tuple[VerifiedArchive, RestoreResult]:
    secret = load_backup_secret(key_file or settings.backup_key_file)
    archive, result = restore_archive(settings, source, secret, force=force)
    asyncio.run(_record(settings, AuditEvent.of(
        ctx, Tag.BACKUP_RESTORE, target=f"backup:{source.name}", manifest_sha256=archive.manifest_sha256,
        signer=archive.signer, created_at=archive.manifest.get("created_at"), forced=force, **result.summary())))
    return archive, result


def backup_dir_of(settings: Settings) -> Path:
    return settings.backup_dir or settings.data_dir / "backups"


def scheduled_backup(settings: Settings) -> BackupResult:
    """One scheduled run: a new archive in the backup dir, then prune to the newest ``backup_keep``."""
    folder = backup_dir_of(settings)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"palisade-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}{SUFFIX}"
    existing = sorted(folder.glob(f"palisade-*{SUFFIX}"))
    # prune before the event is recorded so the one backup event names what went; keep the new one + keep-1 old
    doomed = existing[: max(0, len(existing) - (settings.backup_keep - 1))]
    ctx = RequestContext.for_principal(SCHEDULE_PRINCIPAL)
    result = backup(settings, out, ctx=ctx, pruned=[p.name for p in doomed])
    for p in doomed:
        p.unlink(missing_ok=True)
    return result
