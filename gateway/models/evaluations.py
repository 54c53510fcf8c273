"""Continuous evaluation of production versions: feedback rate, re-measured metrics, drift, history.

For every alias that serves a version in production (canary aliases aside), ``check_production`` (the body of
the beat task ``palisade.eval.continuous``):

- computes the recent feedback of that alias and version (``feedback`` rows newer than the window): how many,
  the thumbs-down share, the mean score (0..1);
- asks ``measure(alias, version)`` for metrics re-measured on the alias's evaluation set, where there is one
  (the trainer's side: ``trainer/evaluate/continuous.py``, a few records, cheap), and compares each to its
  reference: the first measurement on the same set (same records, same method), so a change in method
  between training and production is not mistaken for drift; the version's training-time value is kept next
  to it;
- appends one history row to the version (``eval_results["continuous"]``, newest last, the last ``KEEP``);
- on drift (down share above, mean score below, or a metric worse than its reference by more than a share,
  all from settings) records ``eval:production:drift`` and counts ``palisade_eval_drift_total``.

History is JSON on the version row (no table of its own): ``GET /admin/models/{name}/evaluations`` reads it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm.attributes import flag_modified

from gateway.audit.events import AuditEvent, Tag
from gateway.db.base import utcnow
from gateway.db.batches import Feedback
from gateway.db.registry import ModelAlias, ModelVersion, RegisteredModel
from gateway.errors import NotFound
from gateway.metrics import EVAL_DRIFT, EVAL_FEEDBACK_DOWN_RATE

HISTORY_KEY = "continuous"
KEEP = 500
ACTOR = "system:continuous-eval"
#: metrics where lower is better; any other is higher-is-better
LOWER_IS_BETTER = {"perplexity", "eval_loss", "validation_loss", "loss", "bias", "first_token_s_p50"}

#: (alias, version row) -> {"set": digest of the evaluation set, "metrics": {name: value}} or None
Measure = Callable[[str, ModelVersion], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True)
class Thresholds:
    window_s: float = 86400.0
    min_feedback: int = 5
    max_down_rate: float = 0.3
    min_mean_score: float = 0.5
    max_metric_drift: float = 0.1

    @classmethod
    def from_settings(cls, settings: Any) -> Thresholds:
        return cls(window_s=settings.eval_feedback_window_s, min_feedback=settings.eval_min_feedback,
                   max_down_rate=settings.eval_max_down_rate, min_mean_score=settings.eval_min_mean_score,
                   max_metric_drift=settings.eval_max_metric_drift)


def history_of(version: ModelVersion) -> list[dict[str, Any]]:
    return list((version.eval_results or {}).get(HISTORY_KEY) or [])


def recorded_metrics(eval_results: dict[str, Any] | None) -> dict[str, Any]:
    """The version's evaluation without the continuous history (what gates and baselines compare against)."""
    return {k: v for k, v in (eval_results or {}).items() if k != HISTORY_KEY}


async def feedback_rate(db: Any, alias: str, version_id: str, since: Any) -> dict[str, Any]:
    """Ratings of answers by ``version_id`` (or by the alias when the version was not recorded) since ``since``;
    a thumbs-down or a one-star rating counts as "down"."""
    q = select(Feedback.rating, Feedback.score, Feedback.model_version).where(
        Feedback.model == alias, Feedback.updated_at >= since)
    async with db.session() as s:
        rows = [(r, sc) for r, sc, v in (await s.execute(q)).all() if v in (None, version_id)]
    count = len(rows)
    down = sum(1 for r, _ in rows if r == "down" or r == "1")
    return {"count": count, "down": down, "down_rate": round(down / count, 4) if count else None,
            "mean_score": round(sum(sc for _, sc in rows) / count, 4) if count else None}


def feedback_drift(feedback: dict[str, Any], limits: Thresholds) -> list[str]:
    if feedback["count"] < max(limits.min_feedback, 1):
        return []
    out = []
    if feedback["down_rate"] > limits.max_down_rate:
        out.append(f"thumbs-down share {feedback['down_rate']:.2f} > {limits.max_down_rate:.2f}")
    if feedback["mean_score"] < limits.min_mean_score:
        out.append(f"mean feedback score {feedback['mean_score']:.2f} < {limits.min_mean_score:.2f}")
    return out


def metric_drift(name: str, value: float, reference: float, limits: Thresholds) -> str | None:
    """Worse than ``reference`` by more than ``max_metric_drift`` of it (in the metric's bad direction)."""
    margin = abs(reference) * limits.max_metric_drift
    worse = value > reference + margin if name in LOWER_IS_BETTER else value < reference - margin
    return f"{name} {value:.4g} vs reference {reference:.4g} (> {limits.max_metric_drift:.0%} worse)" if worse \
        else None


def _reference(history: list[dict[str, Any]], eval_set: str | None, name: str) -> float | None:
    for row in history:  # oldest first: the first measurement on this set
        got = (row.get("metrics") or {}).get(name)
        if got and row.get("set") == eval_set and got.get("value") is not None:
            return float(got["value"])
    return None


async def production_versions(db: Any) -> list[tuple[str, str]]:
    """(alias, version id) of every non-canary alias whose version is in production."""
    async with db.session() as s:
        rows = (await s.execute(
            select(ModelAlias.name, ModelVersion.id).join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
            .where(ModelVersion.status == "production", ModelAlias.name.not_like("%@%"))
            .order_by(ModelAlias.name))).all()
    return [(a, v) for a, v in rows]


async def check_version(db: Any, audit: Any, alias: str, version_id: str, limits: Thresholds,
                        measure: Measure | None = None) -> dict[str, Any]:
    now = utcnow()
    feedback = await feedback_rate(db, alias, version_id, now - timedelta(seconds=limits.window_s))
    async with db.session() as s:
        version = await s.get(ModelVersion, version_id)
    measured = await measure(alias, version) if measure is not None else None
    history = history_of(version)
    recorded = recorded_metrics(version.eval_results)
    found = [("feedback", why) for why in feedback_drift(feedback, limits)]
    metrics: dict[str, Any] = {}
    eval_set = (measured or {}).get("set")
    for name, value in ((measured or {}).get("metrics") or {}).items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        reference = _reference(history, eval_set, name)
        metrics[name] = {"value": value, "reference": reference, "recorded": recorded.get(name)}
        why = metric_drift(name, float(value), reference, limits) if reference is not None else None
        if why:
            found.append(("metric", why))
    drift = [why for _, why in found]
    row = {"at": now.isoformat(), "alias": alias, "feedback": feedback, "set": eval_set, "metrics": metrics,
           "drift": drift}
    async with db.session() as s:
        fresh = await s.get(ModelVersion, version_id, with_for_update=True)
        results = dict(fresh.eval_results or {})
        results[HISTORY_KEY] = ([*history_of(fresh), row])[-KEEP:]
        fresh.eval_results = results
        flag_modified(fresh, "eval_results")
    if feedback["down_rate"] is not None:
        EVAL_FEEDBACK_DOWN_RATE.labels(alias).set(feedback["down_rate"])
    for kind, _ in found:
        EVAL_DRIFT.labels(alias, kind).inc()
    if drift:
        await audit.record(AuditEvent(tag=Tag.EVAL_DRIFT, actor=ACTOR, target=f"version:{version_id}",
                                      details={"alias": alias, "drift": drift, "feedback": feedback,
                                               "metrics": metrics}))
    return {"alias": alias, "version": version_id, **row}


async def check_production(db: Any, audit: Any, limits: Thresholds, measure: Measure | None = None
                           ) -> list[dict[str, Any]]:
    """One pass over every production alias (one failing alias does not stop the others: it is reported)."""
    out = []
    for alias, version_id in await production_versions(db):
        try:
            out.append(await check_version(db, audit, alias, version_id, limits, measure))
        except Exception as exc:  # a broken evaluation set must not hide drift on the other aliases
            out.append({"alias": alias, "version": version_id, "error": f"{type(exc).__name__}: {exc}"})
    await audit.record(AuditEvent(tag=Tag.EVAL_CONTINUOUS, actor=ACTOR, target="models",
                                  details={"checked": len(out), "drifting": [r["alias"] for r in out
                                                                              if r.get("drift")]}))
    return out


async def evaluations(db: Any, name: str) -> dict[str, Any]:
    """A model's versions with their recorded evaluation and continuous history (newest version first)."""
    async with db.session() as s:
        model = await s.scalar(select(RegisteredModel).where(RegisteredModel.name == name))
        if model is None:
            raise NotFound(f"no model named {name}")
        versions = (await s.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                    .order_by(ModelVersion.number.desc()))).all()
    return {"model": name, "versions": [
        {"id": v.id, "number": v.number, "status": v.status, "recorded": recorded_metrics(v.eval_results),
         "history": history_of(v)} for v in versions]}
