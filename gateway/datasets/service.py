"""Rules for governed datasets. Every method takes the caller's context (``ctx.principal``, ``ctx.request_id``)
and never an ASGI connection, so the API, the CLI and the worker share them.

* register: record a new version (status ``processing``) with its record of processing, audit, then enqueue
  ``palisade.datasets.process`` by name (after the commit, so the worker always finds the row).
* read: people with ``admin`` or ``approver`` see every version; everyone else only versions they registered,
  and others' versions answer 404 (BOLA), exactly as a missing one.
* approve / reject: a person's session with MFA within 5 minutes, never the registrant (403 with a reason), on a
  ``ready`` version; the decision is bound to the content digest (a stated ``digest`` must match it), and a
  flagged bias report blocks approval unless the approver waives it (the waiver is its own audit event).
* delete: shards and quarantine removed from the store, the upload too; rows and audit trail stay (marked
  deleted), so "which data did this run use" is still answerable. Every training run that used the version is
  marked (``reproducibility.dataset_deleted_at`` and a ``dataset_deleted`` run event): its model was trained on
  data that has since been erased, which a retention or erasure review must be able to find.
* :func:`iter_records`: the read side for training runs: only an approved version whose digest still matches.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import String, column, func, select, table

from gateway.audit.events import AuditEvent, Tag
from gateway.authn.stepup import has_fresh_mfa
from gateway.context import RequestContext
from gateway.datasets.evalsets import matches, write_jsonl
from gateway.datasets.shards import KeyringSealer, Manifest, iter_split
from gateway.datasets.storage import ObjectStore, store_from_url
from gateway.datasets.uploads import UploadWriter
from gateway.db.base import JSONType, UTCDateTime, new_id, utcnow
from gateway.db.datasets import CLASSIFICATIONS, Dataset, DatasetApproval, DatasetVersion
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound

PROCESS_TASK = "palisade.datasets.process"
FORMATS = ("auto", "chat", "prompt_completion", "text")
PII_METHODS = ("redact", "mask", "pseudonymise")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SEES_ALL = ("admin", "approver")
#: pipeline settings a request may tune (``--config FILE``), validated by the worker
CONFIG_SECTIONS = ("quality", "dedup", "bias", "shard_records", "parallel_after", "pii_region", "augment_max",
                   "augment_pivot", "synthetic", "tags", "chunk_records")
AUGMENT = ("counterfactual", "paraphrase", "backtranslate", "synthetic")
#: augmentation that calls a served model (``augment_model``) with the registrant's rights
MODEL_AUGMENT = ("paraphrase", "backtranslate", "synthetic")


class DatasetCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The create request (CLI options, API form fields). Who registers it is the caller, never a field."""

    name: str
    format: str = "auto"
    classification: str = "internal"
    purpose: str = ""
    legal_basis: str = ""
    source: str = ""
    licence: str = ""
    retention_days: int | None = None
    pii: str = "redact"
    on_error: str = "fail"
    augment: list[str] = msgspec.field(default_factory=list)
    #: the model alias paraphrases, back-translations and synthetic rows come from, called with the registrant's
    #: rights
    augment_model: str | None = None
    validation_fraction: float = 0.1
    tokenizer: str | None = None
    seq_len: int = 1024
    #: extra pipeline settings (quality, dedup, bias sections), validated by the worker
    config: dict[str, Any] = msgspec.field(default_factory=dict)

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise BadRequest("name: letters, digits, '.', '_' or '-', up to 128 characters", param="name")
        checks = (("format", self.format, FORMATS), ("pii", self.pii, PII_METHODS),
                  ("on_error", self.on_error, ("skip", "fail")),
                  ("classification", self.classification, CLASSIFICATIONS))
        for param, value, allowed in checks:
            if value not in allowed:
                raise BadRequest(f"{param} must be one of {', '.join(allowed)}", param=param)
        if any(a not in AUGMENT for a in self.augment):
            raise BadRequest(f"augment: one of {', '.join(AUGMENT)}", param="augment")
        needs_model = [a for a in self.augment if a in MODEL_AUGMENT]
        if needs_model and not self.augment_model:
            raise BadRequest(f"augment {needs_model[0]} needs augment_model (a model alias you may use)",
                             param="augment_model")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise BadRequest("validation_fraction must be within [0, 1)", param="validation_fraction")
        if self.tokenizer and not (self.tokenizer.startswith("bpe:") or Path(self.tokenizer).is_dir()):
            raise BadRequest("tokenizer: a local model folder or bpe:<vocab size>", param="tokenizer")
        if len(json.dumps(self.config)) > 20_000:
            raise BadRequest("config is too large", param="config")
        unknown = sorted(set(self.config) - set(CONFIG_SECTIONS))
        if unknown:
            raise BadRequest(f"config: unknown section {unknown[0]!r}; one of {', '.join(CONFIG_SECTIONS)}",
                             param="config")

    def pipeline_config(self) -> dict[str, Any]:
        out = {k: v for k, v in self.config.items() if k in CONFIG_SECTIONS}
        out.update(ingest={"format": self.format, "on_error": self.on_error}, pii=self.pii,
                   augment=list(self.augment), augment_model=self.augment_model,
                   validation_fraction=self.validation_fraction)
        if self.tokenizer:
            out["tokenise"] = {"tokenizer": self.tokenizer, "seq_len": self.seq_len}
        return out


class Decision(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: str = ""
    #: the content digest the approver looked at; refused when the version no longer has it
    digest: str | None = None
    waive_bias: bool = False


class StageView(msgspec.Struct):
    name: str
    records_in: int
    records_out: int
    removed: dict[str, int] = msgspec.field(default_factory=dict)


class DatasetView(msgspec.Struct):
    """``palisade datasets show`` and ``GET /admin/datasets/{id}``: the data card plus governance fields."""

    id: str
    dataset_id: str
    name: str
    number: int
    status: str
    owner: str
    purpose: str
    classification: str
    legal_basis: str
    source: str
    licence: str
    retention_days: int | None
    parent_id: str | None
    records_in: int
    records_out: int
    pii: dict[str, int]
    stages: list[StageView]
    digest: str | None
    code_version: str | None
    bias_flagged: bool
    progress: dict[str, Any]
    error: str | None
    approvals: list[dict[str, Any]]
    created_at: str
    deleted: bool
    card: dict[str, Any]
    #: per-record tag counts (source, topic, language) and label counts from the data card
    tags: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    labels: dict[str, int] = msgspec.field(default_factory=dict)


@dataclass
class DatasetService:
    settings: Any
    db: Any
    keyring: Any
    audit: Any
    #: gateway.jobs.JobQueue: sends Celery tasks by name (the gateway never imports the trainer); None in workers
    jobs: Any
    store: ObjectStore | None = None

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = store_from_url(self.settings.dataset_store, self.settings.data_dir)

    @property
    def uploads_dir(self) -> Path:
        return Path(self.settings.data_dir) / "dataset-uploads"

    # --- ingest ----------------------------------------------------------------------------------------------
    def new_upload(self) -> tuple[str, UploadWriter]:
        """An encrypted upload file to stream into; pass ``"upload:<id>"`` to :meth:`register`."""
        upload_id = new_id()
        writer = UploadWriter(self.uploads_dir / upload_id, self.keyring, upload_id,
                              max_bytes=self.settings.dataset_upload_max_bytes)
        return upload_id, writer

    def resolve_import(self, relative: str) -> Path:
        """A path inside the allowed import folder: no absolute paths, no '..', no symlink leading out."""
        root = self.settings.dataset_import_dir
        if root is None:
            raise BadRequest("server-side import is not enabled (PALISADE_DATASET_IMPORT_DIR)", param="path")
        root = Path(root).resolve()
        candidate = Path(relative)
        if candidate.is_absolute() or ".." in candidate.parts or "\x00" in relative:
            raise BadRequest("path must be relative to the import folder, without '..'", param="path")
        full = root / candidate
        resolved = full.resolve()
        if not resolved.is_relative_to(root) or _has_symlink(root, candidate):
            raise BadRequest("path leaves the import folder", param="path")
        if not resolved.exists():
            raise BadRequest("no such file or folder in the import folder", param="path")
        if resolved.is_dir():
            for dirpath, dirnames, filenames in os.walk(resolved):
                for n in dirnames + filenames:
                    if (Path(dirpath) / n).is_symlink():
                        raise BadRequest("the import folder holds a symbolic link", param="path")
        return resolved

    async def refuse_import(self, ctx: RequestContext, relative: str, reason: str) -> None:
        await self.audit.record(AuditEvent.of(ctx, Tag.DATASET_IMPORT_REFUSED, path_sha256=_sha(relative),
                                              reason=reason))

    async def register(self, ctx: RequestContext, req: DatasetCreate, *, input_ref: str,
                       source_name: str) -> DatasetView:
        req.validate()
        actor = ctx.principal.id
        async with self.db.session() as s:
            dataset = (await s.execute(select(Dataset).where(Dataset.name == req.name))).scalar_one_or_none()
            if dataset is not None and dataset.deleted_at is None and dataset.owner != actor \
                    and not _sees_all(ctx):
                raise Conflict(f"dataset name {req.name!r} is taken", param="name")
            if dataset is None:
                dataset = Dataset(id=new_id(), name=req.name, owner=actor)
                s.add(dataset)
                await s.flush()
            elif dataset.deleted_at is not None:
                dataset.deleted_at = None
            parent = (await s.execute(
                select(DatasetVersion)
                .where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.deleted_at.is_(None))
                .order_by(DatasetVersion.number.desc()).limit(1))).scalar_one_or_none()
            number = (await s.execute(select(func.coalesce(func.max(DatasetVersion.number), 0))
                                      .where(DatasetVersion.dataset_id == dataset.id))).scalar_one() + 1
            version = DatasetVersion(
                id=new_id(), dataset_id=dataset.id, number=number, status="processing", owner=actor,
                purpose=req.purpose, classification=req.classification, legal_basis=req.legal_basis,
                source=req.source or source_name, licence=req.licence, retention_days=req.retention_days,
                parent_id=parent.id if parent else None, pipeline_config=req.pipeline_config(),
                input_ref=input_ref, progress={"stage": "queued", "done": 0},
            )
            s.add(version)
        await self.audit.record(AuditEvent.of(
            ctx, Tag.DATASET_CREATE, target=f"dataset-version:{version.id}", dataset=req.name, number=number,
            classification=req.classification, purpose=req.purpose, legal_basis=req.legal_basis, pii=req.pii,
            input=input_ref.split(":", 1)[0]))
        await asyncio.to_thread(self.jobs.enqueue, PROCESS_TASK, version.id)
        return await self.get(ctx, version.id)

    # --- read ------------------------------------------------------------------------------------------------
    async def _visible(self, ctx: RequestContext, version_id: str, s: Any) -> tuple[DatasetVersion, Dataset]:
        row = await s.get(DatasetVersion, version_id) if _ID.match(version_id or "") else None
        if row is None or not (_sees_all(ctx) or row.owner == ctx.principal.id):
            raise NotFound(f"no dataset version {version_id}")
        return row, await s.get(Dataset, row.dataset_id)

    async def get(self, ctx: RequestContext, version_id: str) -> DatasetView:
        async with self.db.session() as s:
            row, dataset = await self._visible(ctx, version_id, s)
            approvals = list((await s.execute(select(DatasetApproval).where(DatasetApproval.version_id == row.id)
                                              .order_by(DatasetApproval.created_at))).scalars())
        return _view(row, dataset, approvals)

    async def list(self, ctx: RequestContext, limit: int = 200) -> list[DatasetView]:
        async with self.db.session() as s:
            q = select(DatasetVersion, Dataset).join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            if not _sees_all(ctx):
                q = q.where(DatasetVersion.owner == ctx.principal.id)
            rows = (await s.execute(q.order_by(DatasetVersion.created_at.desc()).limit(limit))).all()
        return [_view(v, d, []) for v, d in rows]

    async def quarantine_sample(self, ctx: RequestContext, version_id: str, per_reason: int = 5) -> dict[str, Any]:
        """A sample of what each stage removed (already PII-scrubbed), decrypted for the reviewer; audited."""
        async with self.db.session() as s:
            row, _ = await self._visible(ctx, version_id, s)
        if row.deleted_at is not None or not row.manifest:
            raise NotFound(f"dataset version {version_id} has no stored data")
        manifest = Manifest(version=row.id, shards=row.manifest.get("shards", []))
        samples: dict[str, list[Any]] = {}
        seen: dict[str, int] = {}
        for item in iter_split(self.store, KeyringSealer(self.keyring, row.id), manifest, "quarantine"):
            key = f"{item['stage']}:{item['reason']}"
            seen[key] = seen.get(key, 0) + 1
            bucket = samples.setdefault(key, [])
            if len(bucket) < per_reason:
                bucket.append(item["record"])
            else:
                j = secrets.randbelow(seen[key])
                if j < per_reason:
                    bucket[j] = item["record"]
        await self.audit.record(AuditEvent.of(ctx, Tag.DATASET_QUARANTINE_READ, target=f"dataset-version:{row.id}",
                                              reasons={k: len(v) for k, v in samples.items()}))
        return {"id": row.id, "removed": seen, "samples": samples}

    async def export(self, ctx: RequestContext, version_id: str, out: Path | None = None, *,
                     split: str = "validation", label: str | None = None, tag: str | None = None,
                     include_synthetic: bool = False, limit: int = 100_000) -> tuple[int, list[dict[str, Any]]]:
        """The records of ``split`` with ``label``/``tag`` (an evaluation set), at most ``limit``: written as JSONL
        to ``out`` (0600, atomically; the CLI) or returned (the API). The version must be ready or approved and
        not deleted. Audited (the selection and the count, never content). Returns ``(count, rows)``; rows are
        empty when written to ``out``."""
        if split not in ("train", "validation"):
            raise BadRequest("split must be train or validation", param="split")
        async with self.db.session() as s:
            row, _ = await self._visible(ctx, version_id, s)
        if row.deleted_at is not None or row.status not in ("ready", "approved") or not row.manifest:
            raise Conflict(f"dataset version {version_id} is {'deleted' if row.deleted_at else row.status}; "
                           "only a ready or approved version can be exported", code="dataset_not_exportable")
        manifest = Manifest(version=row.id, shards=row.manifest.get("shards", []))
        selected = (r for r in iter_split(self.store, KeyringSealer(self.keyring, row.id), manifest, split)
                    if matches(r, tag=tag, label=label, include_synthetic=include_synthetic))
        records = itertools.islice(selected, limit)
        if out is not None:
            count, rows = await asyncio.to_thread(write_jsonl, records, out), []
        else:
            rows = await asyncio.to_thread(list, records)
            count = len(rows)
        await self.audit.record(AuditEvent.of(ctx, Tag.DATASET_EXPORT, target=f"dataset-version:{row.id}",
                                              split=split, label=label, tag_filter=tag, synthetic=include_synthetic,
                                              records=count, digest=row.content_digest))
        return count, rows

    # --- governance ------------------------------------------------------------------------------------------
    async def approve(self, ctx: RequestContext, version_id: str, decision: Decision) -> DatasetView:
        return await self._decide(ctx, version_id, decision, "approved")

    async def reject(self, ctx: RequestContext, version_id: str, decision: Decision) -> DatasetView:
        return await self._decide(ctx, version_id, decision, "rejected")

    async def _decide(self, ctx: RequestContext, version_id: str, decision: Decision, outcome: str) -> DatasetView:
        p = ctx.principal
        async with self.db.session() as s:
            row, _ = await self._visible(ctx, version_id, s)
            refusal = None
            if p.kind != "user" or p.auth_method != "session" or not has_fresh_mfa(p):
                refusal = ("mfa_step_up_required", "a decision on a dataset needs a person's session with a "
                           "multi-factor check within the last 5 minutes; POST /auth/step-up first")
            elif p.id == row.owner:
                refusal = ("four_eyes", "the person who registered this dataset version cannot approve or reject "
                           "it; another approver must decide")
            if refusal:
                await self._denied(ctx, row, outcome, refusal[0])
                raise Forbidden(refusal[1], code=refusal[0])
            if row.deleted_at is not None or row.status != "ready":
                raise Conflict(f"dataset version is {row.status if row.deleted_at is None else 'deleted'}; "
                               "only a ready version can be decided")
            if decision.digest is not None and decision.digest != row.content_digest:
                raise Conflict("the version's content digest is not the one you reviewed", code="digest_mismatch")
            if outcome == "approved" and row.bias_flagged and not decision.waive_bias:
                flagged = row.card.get("bias", {}).get("after_augmentation", {}).get("flagged", [])
                raise Conflict(f"the bias report flags {', '.join(flagged)}; mitigate (augment) or approve with "
                               "waive_bias and a reason", code="bias_flagged")
            if decision.waive_bias and not decision.reason.strip():
                raise BadRequest("waiving a flagged bias report needs a reason", param="reason")
            row.status = outcome
            s.add(DatasetApproval(id=new_id(), version_id=row.id, approver=p.id, decision=outcome,
                                  digest=row.content_digest or "", reason=decision.reason[:2000],
                                  bias_waived=bool(decision.waive_bias and row.bias_flagged)))
            digest = row.content_digest
        if outcome == "approved" and decision.waive_bias and row.bias_flagged:
            await self.audit.record(AuditEvent.of(ctx, Tag.DATASET_BIAS_WAIVE, target=f"dataset-version:{row.id}",
                                                  reason=decision.reason[:500]))
        await self.audit.record(AuditEvent.of(
            ctx, Tag.DATASET_APPROVE if outcome == "approved" else Tag.DATASET_REJECT,
            target=f"dataset-version:{row.id}", decision=outcome, digest=digest, registrant=row.owner,
            reason=decision.reason[:500]))
        return await self.get(ctx, version_id)

    async def _denied(self, ctx: RequestContext, row: DatasetVersion, outcome: str, code: str) -> None:
        await self.audit.record(AuditEvent.of(ctx, Tag.DATASET_DECISION_DENIED, target=f"dataset-version:{row.id}",
                                              decision="deny", wanted=outcome, why=code))

    async def delete(self, ctx: RequestContext, version_id: str) -> DatasetView:
        async with self.db.session() as s:
            row, dataset = await self._visible(ctx, version_id, s)
            if row.deleted_at is not None:
                raise NotFound(f"no dataset version {version_id}")
            row.deleted_at = utcnow()
            input_ref = row.input_ref
            row.input_ref = None
            remaining = (await s.execute(select(func.count()).select_from(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset.id, DatasetVersion.deleted_at.is_(None),
                DatasetVersion.id != row.id))).scalar_one()
            if remaining == 0:
                dataset.deleted_at = utcnow()
            runs = await mark_runs_of_deleted(s, row.id, row.deleted_at, ctx.principal.id)
        removed = self.store.delete_prefix(row.id)
        self.discard_upload(input_ref)
        await self.audit.record(AuditEvent.of(ctx, Tag.DATASET_DELETE, target=f"dataset-version:{row.id}",
                                              objects_removed=removed, digest=row.content_digest,
                                              status=row.status, runs_marked=runs))
        return await self.get(ctx, version_id)

    def discard_upload(self, input_ref: str | None) -> None:
        if input_ref and input_ref.startswith("upload:"):
            upload_id = input_ref.split(":", 2)[1]
            if _ID.match(upload_id):
                (self.uploads_dir / upload_id).unlink(missing_ok=True)

    # --- the worker's side: progress and outcome of a pipeline job ------------------------------------------
    async def claim(self, version_id: str) -> DatasetVersion | None:
        """The version to process, or None when it is gone or already decided (a redelivered job)."""
        async with self.db.session() as s:
            row = await s.get(DatasetVersion, version_id)
            if row is None or row.deleted_at is not None or row.status != "processing":
                return None
            row.progress = {"stage": "started", "done": 0}
            return row

    async def set_progress(self, version_id: str, progress: dict[str, Any]) -> None:
        async with self.db.session() as s:
            row = await s.get(DatasetVersion, version_id)
            if row is not None and row.status == "processing":
                row.progress = progress

    async def finish(self, version_id: str, card: dict[str, Any], manifest: dict[str, Any], digest: str) -> None:
        async with self.db.session() as s:
            row = await s.get(DatasetVersion, version_id)
            if row is None or row.deleted_at is not None:
                return
            row.status = "ready"
            row.card, row.manifest, row.content_digest = card, manifest, digest
            row.records_in, row.records_out = card["records_in"], card["records_out"]
            row.stages = [{k: st[k] for k in ("name", "records_in", "records_out", "removed")}
                          for st in card["stages"]]
            row.pii = card["pii"]
            row.code_version = card.get("code_version")
            row.bias_flagged = bool(card.get("bias", {}).get("after_augmentation", {}).get("flagged"))
            row.progress = {"stage": "done", "done": 1}
            input_ref, row.input_ref = row.input_ref, None
            owner = row.owner
        self.discard_upload(input_ref)
        await self.audit.record(AuditEvent(Tag.DATASET_READY, actor="system:datasets",
                                           target=f"dataset-version:{version_id}",
                                           details={"digest": digest, "registrant": owner,
                                                    "records_in": card["records_in"],
                                                    "records_out": card["records_out"], "pii": card["pii"]}))

    async def fail(self, version_id: str, error: str) -> None:
        async with self.db.session() as s:
            row = await s.get(DatasetVersion, version_id)
            if row is None:
                return
            row.status, row.error = "failed", error[:4000]
            row.progress = {"stage": "failed", "done": 1}
            input_ref, row.input_ref = row.input_ref, None
        self.discard_upload(input_ref)
        await self.audit.record(AuditEvent(Tag.DATASET_FAILED, actor="system:datasets",
                                           target=f"dataset-version:{version_id}", details={"error": error[:500]}))

    # --- the read side for training runs ---------------------------------------------------------------------
    async def approved_version(self, version_id: str) -> DatasetVersion:
        """The version if it may be used for training: approved, not deleted, approval bound to its digest."""
        async with self.db.session() as s:
            row = await s.get(DatasetVersion, version_id) if _ID.match(version_id or "") else None
            if row is None or row.deleted_at is not None:
                raise NotFound(f"no dataset version {version_id}")
            approval = (await s.execute(select(DatasetApproval).where(
                DatasetApproval.version_id == row.id, DatasetApproval.decision == "approved")
                .order_by(DatasetApproval.created_at.desc()).limit(1))).scalar_one_or_none()
        if row.status != "approved" or approval is None or approval.digest != row.content_digest:
            raise Conflict(f"dataset version {version_id} is {row.status}, not approved for its current content",
                           code="dataset_not_approved")
        return row

    def records(self, row: DatasetVersion, split: str = "train") -> Iterator[dict[str, Any]]:
        """Normalised records of one split: ``{"messages": [...]}``, ``{"prompt", "completion"}`` or ``{"text"}``
        (each with ``meta``), decrypted shard by shard; each shard's sha256 is checked before it is opened."""
        if split not in ("train", "validation"):
            raise BadRequest("split must be train or validation", param="split")
        manifest = Manifest(version=row.id, shards=row.manifest.get("shards", []))
        if manifest.digest != row.content_digest:
            raise Conflict("the stored manifest does not match the approved digest", code="digest_mismatch")
        return iter_split(self.store, KeyringSealer(self.keyring, row.id), manifest, split)


async def iter_records(service: DatasetService, version_id: str, split: str = "train"
                       ) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """For training runs: ``(info, records)`` of an approved version, where ``info`` is ``{"id", "digest",
    "status", "records", "format"}``; raises Conflict (409) when the version is not approved for its content."""
    row = await service.approved_version(version_id)
    info = {"id": row.id, "digest": row.content_digest, "status": row.status,
            "records": row.card.get("splits", {}).get(split, 0), "format": row.card.get("format")}
    return info, service.records(row, split)


_ID = re.compile(r"^[0-9a-f]{32}$")

# The runs domain's tables, by name (as the runs domain reads ``dataset_versions``): neither imports the other.
_runs = table("training_runs", column("id", String), column("dataset_id", String),
              column("reproducibility", JSONType), column("updated_at", UTCDateTime()))
_run_events = table("training_run_events", column("run_id", String), column("at", UTCDateTime()),
                    column("type", String), column("data", JSONType))


async def mark_runs_of_deleted(s: Any, version_id: str, when: Any, actor: str) -> list[str]:
    """Mark every training run of ``version_id`` as trained on erased data: ``reproducibility`` gains
    ``dataset_deleted_at`` (and who deleted it), and the run's event log a ``dataset_deleted`` event. No migration:
    ``reproducibility`` is already a JSON column. Returns the run ids (for the audit event); none when the runs
    tables are not installed."""
    try:
        async with s.begin_nested():
            rows = (await s.execute(select(_runs.c.id, _runs.c.reproducibility)
                                    .where(_runs.c.dataset_id == version_id))).all()
    except Exception:  # noqa: BLE001 - no runs tables (datasets without training): nothing to mark
        return []
    at = when.isoformat()
    for run_id, repro in rows:
        marked = {**(repro or {}), "dataset_deleted_at": at, "dataset_deleted_by": actor}
        await s.execute(_runs.update().where(_runs.c.id == run_id).values(reproducibility=marked, updated_at=when))
        await s.execute(_run_events.insert().values(run_id=run_id, at=when, type="dataset_deleted",
                                                    data={"dataset": version_id, "deleted_at": at}))
    return [r for r, _ in rows]


def _sees_all(ctx: RequestContext) -> bool:
    return any(r in SEES_ALL for r in ctx.principal.roles)


def _has_symlink(root: Path, relative: Path) -> bool:
    current = root
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            return True
    return False


def _sha(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode(errors="replace")).hexdigest()[:16]


def _view(row: DatasetVersion, dataset: Dataset, approvals: list[DatasetApproval]) -> DatasetView:
    return DatasetView(
        id=row.id, dataset_id=row.dataset_id, name=dataset.name, number=row.number, status=row.status,
        owner=row.owner, purpose=row.purpose, classification=row.classification, legal_basis=row.legal_basis,
        source=row.source, licence=row.licence, retention_days=row.retention_days, parent_id=row.parent_id,
        records_in=row.records_in, records_out=row.records_out, pii=dict(row.pii or {}),
        stages=[StageView(name=s["name"], records_in=s["records_in"], records_out=s["records_out"],
                          removed=s.get("removed", {})) for s in (row.stages or [])],
        digest=row.content_digest, code_version=row.code_version, bias_flagged=row.bias_flagged,
        progress=dict(row.progress or {}), error=row.error,
        approvals=[{"approver": a.approver, "decision": a.decision, "digest": a.digest, "reason": a.reason,
                    "bias_waived": a.bias_waived, "at": a.created_at.isoformat()} for a in approvals],
        created_at=row.created_at.isoformat(), deleted=row.deleted_at is not None, card=dict(row.card or {}),
        tags=dict((row.card or {}).get("tags") or {}), labels=dict((row.card or {}).get("labels") or {}),
    )
