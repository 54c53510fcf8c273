"""Celery task ``palisade.eval.continuous`` (scheduled by ``gateway.jobs.beat_schedule`` every
PALISADE_EVAL_INTERVAL_S): every production alias's feedback rate and re-measured metrics, drift audited and
counted (``gateway.models.evaluations``)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from gateway.runtime import run_in_services


async def continuous(services) -> dict[str, Any]:
    from gateway.models.evaluations import Thresholds, check_production
    from trainer.evaluate.continuous import measurer

    results = await check_production(services.db, services.audit, Thresholds.from_settings(services.settings),
                                     measurer(services.settings.data_dir))
    return {"checked": len(results), "drifting": [r["alias"] for r in results if r.get("drift")],
            "errors": {r["alias"]: r["error"] for r in results if r.get("error")}}


@shared_task(name="palisade.eval.continuous")
def continuous_eval() -> dict[str, Any]:
    return run_in_services(continuous)
