"""What the registry answers with (API bodies and the CLI's JSON): msgspec Structs, so the shapes are documented."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from gateway.db.registry import AliasHistory, ModelAlias, ModelVersion, RegisteredModel
from gateway.models.canary import CanaryThresholds
from gateway.models.spec import ModelSpec


class VersionOut(msgspec.Struct, kw_only=True):
    id: str
    model: str | None
    number: int
    kind: str
    status: str
    digest: str
    source: str
    created_by: str
    created_at: datetime
    artifact: str | None = None
    files: dict[str, str] = msgspec.field(default_factory=dict)
    base_version: str | None = None
    run_id: str | None = None
    signed: bool = False
    eval_results: dict[str, Any] = msgspec.field(default_factory=dict)
    gates: dict[str, Any] = msgspec.field(default_factory=dict)
    gates_passed: bool = True
    gate_override_by: str | None = None
    approved_by: str | None = None
    status_reason: str | None = None


class AliasOut(msgspec.Struct, kw_only=True):
    alias: str
    version: str | None
    previous_version: str | None
    generation: int
    percent: float | None = None
    principals: list[str] = msgspec.field(default_factory=list)
    #: a canary's automatic-rollback thresholds, when set
    thresholds: CanaryThresholds | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None


class HistoryOut(msgspec.Struct, kw_only=True):
    alias: str
    version: str | None
    previous_version: str | None
    action: str
    actor: str
    generation: int
    at: datetime
    percent: float | None = None


class ModelOut(msgspec.Struct, kw_only=True):
    name: str
    family: str | None
    licence: str | None
    classification: str
    owner: str | None
    versions: list[VersionOut]
    aliases: list[AliasOut]
    history: list[HistoryOut] | None = None


class AliasState(msgspec.Struct, frozen=True, kw_only=True):
    """One alias as every replica should serve it (read by gateway.models.catalog)."""

    name: str
    version_id: str | None
    generation: int
    spec: ModelSpec | None
    #: where the version came from ("models-file", "import", "run")
    source: str | None = None
    #: when the alias last changed (replicas report how long they took to learn it)
    changed_at: datetime | None = None
    percent: float = 0.0
    principals: tuple[str, ...] = ()
    thresholds: CanaryThresholds | None = None


def version_view(v: ModelVersion, model_name: str | None = None) -> VersionOut:
    return VersionOut(
        id=v.id, model=model_name, number=v.number, kind=v.kind, status=v.status, digest=v.digest, source=v.source,
        created_by=v.created_by, created_at=v.created_at, artifact=v.artifact, files=dict(v.files or {}),
        base_version=v.base_version_id, run_id=v.run_id, signed=v.signature is not None,
        eval_results=dict(v.eval_results or {}), gates=dict(v.gates or {}), gates_passed=v.gates_passed,
        gate_override_by=v.gate_override_by, approved_by=v.approved_by, status_reason=v.status_reason,
    )


def alias_view(a: ModelAlias) -> AliasOut:
    return AliasOut(alias=a.name, version=a.version_id, previous_version=a.previous_version_id,
                    generation=a.generation, percent=a.percent, principals=list(a.principals or []),
                    thresholds=CanaryThresholds.load(a.canary_thresholds), updated_at=a.updated_at,
                    updated_by=a.updated_by)


def history_view(h: AliasHistory) -> HistoryOut:
    return HistoryOut(alias=h.alias, version=h.version_id, previous_version=h.previous_version_id, action=h.action,
                      actor=h.actor, generation=h.generation, at=h.created_at, percent=h.percent)


def model_view(m: RegisteredModel, versions: list[ModelVersion], aliases: list[ModelAlias]) -> ModelOut:
    return ModelOut(name=m.name, family=m.family, licence=m.licence, classification=m.classification,
                    owner=m.owner, versions=[version_view(v, m.name) for v in versions],
                    aliases=[alias_view(a) for a in aliases])


def to_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
