"""The model registry's tables: models, their versions, the aliases that point at versions, and alias history.

One owner of model state: the router serves what ``aliases`` says (each replica reads it on a change event and
on a short poll), the API and CLI read and write the same rows, and ``alias_history`` answers "which version
served this alias when". A models-file entry is a version of kind ``endpoint`` (its serving spec is the entry);
imported and trained versions carry their artifact and the sha256 of every file, checked before every load.

A canary is an alias row named ``<alias>@canary`` with ``percent`` and/or ``principals`` set, and optionally the
thresholds past which every replica's canary watcher ends it on its own (``canary_thresholds``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, IdMixin, utcnow

#: version kinds: an upstream or built-in endpoint from the models file, or an artifact on disk
KINDS = ("endpoint", "transformers", "gguf", "adapter")
#: a version moves candidate -> approved -> production -> retired, or is rejected (tampered, refused)
STATUSES = ("candidate", "approved", "production", "retired", "rejected")


class RegisteredModel(IdMixin, Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    family: Mapped[str | None] = mapped_column(String(64), default=None)
    licence: Mapped[str | None] = mapped_column(String(128), default=None)
    #: ABAC resource attributes of every alias serving this model
    classification: Mapped[str] = mapped_column(String(32), default="internal")
    owner: Mapped[str | None] = mapped_column(String(128), default=None)


class ModelVersion(IdMixin, Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    #: 1, 2, ... per model (the id is what commands take)
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    #: folder or file on a volume every replica sees; None for endpoints
    artifact: Mapped[str | None] = mapped_column(Text, default=None)
    #: relative path -> sha256 of every file of the artifact
    files: Mapped[dict] = mapped_column(default=dict)
    #: sha256 over kind, files, base digest and serving spec: what an approval is bound to
    digest: Mapped[str] = mapped_column(String(64), index=True)
    #: Ed25519 signature (hex) over the digest by a trusted key (the trainer's), when signed
    signature: Mapped[str | None] = mapped_column(String(128), default=None)
    signing_key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    base_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"), default=None)
    #: where it came from: "import", "run" or "models-file"; the run id for a trained version
    source: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    #: the importer, or the person who requested the training run: never its approver
    created_by: Mapped[str] = mapped_column(String(200))
    #: how it is served (a ModelSpec without alias): backend, defaults, caps
    spec: Mapped[dict] = mapped_column(default=dict)
    eval_results: Mapped[dict] = mapped_column(default=dict)
    #: gate name -> {"passed": bool, ...}; gates_passed is False when any failed
    gates: Mapped[dict] = mapped_column(default=dict)
    gates_passed: Mapped[bool] = mapped_column(default=True)
    gate_override_by: Mapped[str | None] = mapped_column(String(200), default=None)
    gate_override_reason: Mapped[str | None] = mapped_column(String(1000), default=None)
    status: Mapped[str] = mapped_column(String(16), default="candidate", index=True)
    status_reason: Mapped[str | None] = mapped_column(String(1000), default=None)
    approved_by: Mapped[str | None] = mapped_column(String(200), default=None)
    approved_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(IdMixin, Base):
    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(160), unique=True, index=True)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), default=None)
    #: None only for a canary alias that has been cleared
    version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"), default=None)
    previous_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"), default=None)
    #: canary aliases: share of the base alias's requests (0..100), and principals always sent here
    percent: Mapped[float | None] = mapped_column(Float(), default=None)
    principals: Mapped[list] = mapped_column(default=list)
    #: canary aliases: {"max_error_rate", "max_p99_ratio", "min_requests", "auto"}, or None (watched by hand)
    canary_thresholds: Mapped[dict | None] = mapped_column(default=None)
    #: bumped on every change; replicas compare it to what they serve
    generation: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(200), default=None)


class AliasHistory(IdMixin, Base):
    """One row per change: from ``created_at`` on, ``alias`` served ``version_id`` (None: canary cleared)."""

    __tablename__ = "alias_history"

    alias: Mapped[str] = mapped_column(String(160), index=True)
    version_id: Mapped[str | None] = mapped_column(String(32), default=None)
    previous_version_id: Mapped[str | None] = mapped_column(String(32), default=None)
    #: seed, promote, canary, canary-end, canary-auto-rollback, rollback
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
    generation: Mapped[int] = mapped_column(Integer)
    percent: Mapped[float | None] = mapped_column(Float(), default=None)
    reason: Mapped[str | None] = mapped_column(String(1000), default=None)
