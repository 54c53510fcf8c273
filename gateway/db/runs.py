"""Tables: a training run (request, approval, lease, progress, result) and its event log.

A sweep is a parent run (``kind="sweep"``) whose trials are runs with ``parent_id`` set; the sweep is
approved once and its best trial's candidate becomes the sweep's candidate.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, IdMixin, utcnow

STATUSES = ("awaiting_approval", "queued", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})


class TrainingRun(IdMixin, Base):
    __tablename__ = "training_runs"

    kind: Mapped[str] = mapped_column(String(16), default="run")  # run | sweep | trial
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("training_runs.id"), index=True, default=None)
    trial_number: Mapped[int | None] = mapped_column(Integer, default=None)
    # --- the request (everything the approval digest covers) -------------------------------------------
    dataset_id: Mapped[str] = mapped_column(String(64), index=True)
    method: Mapped[str] = mapped_column(String(32))
    base: Mapped[str | None] = mapped_column(String(500), default=None)
    config: Mapped[dict] = mapped_column(default=dict)
    gates: Mapped[list] = mapped_column(default=list)
    sweep: Mapped[dict | None] = mapped_column(default=None)
    requester: Mapped[str] = mapped_column(String(200), index=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    # --- approval --------------------------------------------------------------------------------------
    status: Mapped[str] = mapped_column(String(32), index=True, default="awaiting_approval")
    approved_by: Mapped[str | None] = mapped_column(String(200), default=None)
    approved_at: Mapped[datetime | None] = mapped_column(default=None)
    approved_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    # --- execution: a lease so a duplicated task never trains twice and a dead worker's run is taken over --
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    run_dir: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # --- results ---------------------------------------------------------------------------------------
    #: {"step", "total_steps", "loss": [...], "lr": [...], "eval": [{step, eval_loss, perplexity}],
    #:  "tokens_per_s", "eta_s"}
    metrics: Mapped[dict] = mapped_column(default=dict)
    evaluation: Mapped[dict] = mapped_column(default=dict)
    #: [{"name", "metric", "op", "threshold", "value", "passed"}]
    gate_results: Mapped[list] = mapped_column(default=list)
    #: what the registry needs to register the output (path, files with sha256, base, eval, gates)
    candidate: Mapped[dict] = mapped_column(default=dict)
    candidate_version: Mapped[str | None] = mapped_column(String(64), default=None)
    #: seed, code version, library versions, dataset digest, base digest, full config
    reproducibility: Mapped[dict] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TrainingRunEvent(Base):
    __tablename__ = "training_run_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict] = mapped_column(default=dict)
