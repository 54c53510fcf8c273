"""Celery task ``palisade.ops.backup`` (scheduled by ``gateway.jobs.beat_schedule``; ids in, a service call out)."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="palisade.ops.backup")
def scheduled_backup() -> dict[str, Any]:
    from gateway.ops.service import scheduled_backup as run
    from gateway.settings import get_settings

    return run(get_settings()).summary()

