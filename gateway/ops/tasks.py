"""Celery task ``palisade.ops.backup`` and its beat schedule (every PALISADE_BACKUP_INTERVAL_S seconds)."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="palisade.ops.backup")
def scheduled_backup() -> dict[str, Any]:
    from gateway.ops.service import scheduled_backup as run
    from gateway.settings import get_settings

    return run(get_settings()).summary()


def beat_schedule(settings: Any) -> dict[str, Any]:
    """Entries for ``app.conf.beat_schedule``; empty unless scheduled backups are configured."""
    if settings.backup_interval_s <= 0:
        return {}
    return {"palisade-ops-backup": {"task": "palisade.ops.backup", "schedule": settings.backup_interval_s,
                                    "options": {"queue": "cpu"}}}
