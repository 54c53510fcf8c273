"""The production baseline a run's relative gates compare against, read from the model registry.

A relative gate ("perplexity may rise at most 2 % over production") needs production's numbers. They are the
``eval_results`` recorded on the registry version that production serves:

- the alias the run targets (``config["alias"]``: the alias its candidate is meant to replace), when it points at
  a version in production;
- else the production version of the run's base model (``base`` is a registry version id): the newest version of
  that model whose status is ``production``.

``None`` when there is no such version or it has no recorded evaluation: then relative gates pass and say so
(``trainer.evaluate.gates``). The numbers are stored next to the candidate's in the run's ``evaluation``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gateway.db.registry import ModelAlias, ModelVersion, RegisteredModel
from gateway.models.evaluations import recorded_metrics

#: the run config key naming the alias a run's candidate is meant for (not a training setting: the executor
#: strips it before the training process sees the config)
TARGET_KEY = "alias"


def target_alias(run) -> str | None:
    value = (run.config or {}).get(TARGET_KEY)
    return str(value) if value else None


async def production_baseline(db, run) -> dict[str, Any] | None:
    """``{"version", "model", "alias", "metrics"}`` of the production version the run is measured against."""
    alias = target_alias(run)
    async with db.session() as s:
        version = None
        if alias:
            row = await s.scalar(select(ModelAlias).where(ModelAlias.name == alias))
            if row is not None and row.version_id:
                version = await s.get(ModelVersion, row.version_id)
        if (version is None or version.status != "production") and run.base and "/" not in run.base \
                and not run.base.startswith("preset:"):
            base = await s.get(ModelVersion, run.base)
            if base is not None:
                version = await s.scalar(
                    select(ModelVersion).where(ModelVersion.model_id == base.model_id,
                                               ModelVersion.status == "production")
                    .order_by(ModelVersion.status_changed_at.desc()).limit(1))
        if version is None or version.status != "production" or not recorded_metrics(version.eval_results):
            return None
        model = await s.get(RegisteredModel, version.model_id)
        return {"version": version.id, "model": model.name if model else None, "alias": alias,
                "metrics": recorded_metrics(version.eval_results)}


def production_metrics_from(db):
    """The executor's ``production_metrics`` hook over the registry tables."""

    async def lookup(run) -> dict[str, Any] | None:
        return await production_baseline(db, run)

    return lookup
