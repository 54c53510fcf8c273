"""Thin Celery tasks: ids in, call the pipeline, report progress. Names are stable (``palisade.*``)."""

from __future__ import annotations

import platform

from celery import shared_task


@shared_task(name="palisade.system.ping")
def ping() -> dict[str, str]:
    """Liveness of the worker fleet (used by readiness checks and the compose healthcheck)."""
    import torch

    return {"host": platform.node(), "torch": torch.__version__, "cuda": str(torch.cuda.is_available())}
