"""The model registry's rules: import, register, promote (four eyes), canary, roll back, history.

Every method takes a context (``ctx.principal`` and ``ctx.request_id``; the gateway's ``RequestContext``) and
never an ASGI connection, so a route, the CLI and a Celery task call the same code.

Promotion rules, in the order they are checked (each refusal is audited with its reason):
1. the approver is a person, and neither imported the version nor requested the run that produced it
   (nor overrode its gates: an override and a promotion are two different people besides the requester);
2. the approver passed MFA within the last 5 minutes;
3. every evaluation gate passed, or a separate, audited gate override exists;
4. the artifact on disk still matches the recorded sha256 of every file (and its signature): the approval is
   bound to that digest, and replicas check it again before they load.
Then the alias flips in one transaction (generation + 1, previous version kept for rollback, history row) and
the change is published; every replica's :class:`gateway.models.catalog.ModelCatalog` swaps within 2 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from gateway.audit.events import AuditEvent, AuditTrail, Tag
from gateway.authn.stepup import STEP_UP_WINDOW
from gateway.db.base import utcnow
from gateway.db.changes import bump_version
from gateway.db.registry import AliasHistory, ModelAlias, ModelVersion, RegisteredModel
from gateway.db.session import Database
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound
from gateway.models import artifacts
from gateway.models.canary import CanaryThresholds
from gateway.models.spec import ALIAS_RE, ModelSpec, parse_spec
from gateway.models.views import (
    AliasOut,
    AliasState,
    HistoryOut,
    ModelOut,
    VersionOut,
    alias_view,
    history_view,
    model_view,
    version_view,
)

_log = structlog.get_logger("palisade.models")
CANARY = "@canary"
Publish = Callable[[str], Awaitable[None]]


def _principal(ctx: Any) -> Any:
    return getattr(ctx, "principal", None)


def _actor(ctx: Any) -> str:
    p = _principal(ctx)
    return getattr(p, "id", None) or str(getattr(ctx, "actor", "system"))


def _mfa_fresh(ctx: Any, now: datetime) -> bool:
    p = _principal(ctx)
    if getattr(p, "kind", None) != "user":
        return False
    at = getattr(ctx, "mfa_at", None) or getattr(p, "mfa_at", None)
    if at is None:
        return False
    age = now - at
    return age.total_seconds() >= -5 and age <= STEP_UP_WINDOW


class Registry:
    """Models, versions and aliases in the database; the only writer of alias state."""

    def __init__(
        self,
        db: Database,
        audit: AuditTrail,
        *,
        import_roots: list[Path],
        trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
        publish: Publish | None = None,
    ) -> None:
        self.db = db
        self.audit = audit
        self.import_roots = [Path(r) for r in import_roots]
        self.trusted_keys = dict(trusted_keys or {})
        #: tells every replica an alias changed (the change feed); set by the composition root
        self.publish = publish

    # ------------------------------------------------------------------ events
    async def _record(self, ctx: Any, tag: str, target: str, *, decision: str = "allow", **details: Any) -> None:
        await self.audit.record(AuditEvent(tag, actor=_actor(ctx), target=target, decision=decision,
                                           request_id=getattr(ctx, "request_id", None), details=details))

    async def _deny(self, ctx: Any, alias: str, version: str, reason: str, code: str) -> Forbidden:
        await self._record(ctx, Tag.MODEL_PROMOTE_DENIED, f"alias:{alias}", decision="deny",
                           version=version, reason=reason)
        return Forbidden(reason, code=code)

    async def _changed(self, alias: str) -> None:
        if self.publish is not None:
            try:
                await self.publish(f"models:{alias}")
            except Exception as exc:  # replicas poll as well
                _log.warning("model change not published", error=type(exc).__name__)

    # ------------------------------------------------------------------ models-file seeding
    async def seed(self, specs: list[ModelSpec], *, actor: str = "models-file") -> None:
        """Each models-file entry becomes an ``endpoint`` version its alias points at.

        An alias whose current version came from the registry (promoted) keeps it; one that still serves a
        models-file version follows the file when the entry changed.
        """
        for attempt in range(3):
            try:
                changed = await self._seed_once(specs, actor)
                break
            except IntegrityError:  # another replica seeded the same alias at the same moment: read it back
                if attempt == 2:
                    raise
        for name in changed:
            await self._record(_System(actor), Tag.MODEL_SEED, f"alias:{name}")
        if changed:
            _log.info("model aliases seeded", aliases=changed)

    async def _seed_once(self, specs: list[ModelSpec], actor: str) -> list[str]:
        changed: list[str] = []
        async with self.db.session() as s:
            for spec in specs:
                body = _spec_body(spec)
                dig = artifacts.digest("endpoint", {}, None, body)
                alias = await _alias(s, spec.alias, lock=True)
                if alias is not None and alias.version_id is not None:
                    current = await s.get(ModelVersion, alias.version_id)
                    if current is not None and (current.source != "models-file" or current.digest == dig):
                        continue
                    if current is not None:  # the file's entry changed: its old version leaves production
                        current.status, current.status_changed_at = "retired", utcnow()
                model = await _model_named(s, spec.alias)
                if model is None:
                    model = RegisteredModel(name=spec.alias, classification=spec.classification, owner=spec.owner)
                    s.add(model)
                    await s.flush()
                else:
                    model.classification, model.owner = spec.classification, spec.owner
                version = ModelVersion(model_id=model.id, number=await _next_number(s, model.id), kind="endpoint",
                                       files={}, digest=dig, source="models-file", created_by=actor, spec=body,
                                       status="production", approved_by=actor, approved_digest=dig)
                s.add(version)
                await s.flush()
                _flip(s, alias, spec.alias, model.id, version.id, actor=actor, action="seed")
                changed.append(spec.alias)
            if changed:
                await bump_version(s, "models")
        return changed

    # ------------------------------------------------------------------ candidates
    async def import_model(
        self, ctx: Any, name: str, *, path: str | Path | None = None, gguf: str | Path | None = None,
        base: str | None = None, family: str | None = None, licence: str | None = None,
    ) -> ModelVersion:
        """Register an existing model (folder, GGUF file or peft adapter on ``base``) as a candidate version."""
        if (path is None) == (gguf is None):
            raise BadRequest("give exactly one of path (a folder) or gguf (a file)")
        try:
            real = artifacts.resolve_import(path or gguf, self.import_roots)  # type: ignore[arg-type]
            kind = "gguf" if gguf is not None else artifacts.detect_kind(real)
            files = await asyncio.to_thread(artifacts.scan, real, kind)
        except artifacts.ArtifactError as exc:
            raise BadRequest(str(exc), param="path" if path is not None else "gguf") from None
        if kind == "adapter" and base is None:
            raise BadRequest("a peft adapter needs --base VERSION (the version it was trained on)", param="base")
        version = await self._add_version(ctx, name, kind=kind, artifact=str(real), files=files, base=base,
                                          source="import", created_by=_actor(ctx), family=family, licence=licence)
        await self._record(ctx, Tag.MODEL_IMPORT, f"version:{version.id}", model=name, kind=kind,
                           digest=version.digest, base=base, files=len(files))
        return version

    async def register_version(
        self, ctx: Any, name: str, path: str | Path, *, requested_by: str, run_id: str | None = None,
        base_version: str | None = None, eval_results: Mapping[str, Any] | None = None,
        gates: Mapping[str, Any] | None = None, signature: str | None = None, key_id: str | None = None,
        kind: str | None = None,
    ) -> ModelVersion:
        """A training run's output as a candidate: ``requested_by`` (the run's requester) can never approve it.

        ``gates`` maps a gate name to ``{"passed": bool, ...}``; one failed gate blocks promotion.
        """
        real = Path(path).resolve()
        kind = kind or artifacts.detect_kind(real)
        try:
            files = await asyncio.to_thread(artifacts.scan, real, kind)
        except artifacts.ArtifactError as exc:
            raise BadRequest(str(exc), param="path") from None
        gates = dict(gates or {})
        passed = all(bool((g or {}).get("passed")) if isinstance(g, Mapping) else bool(g) for g in gates.values())
        version = await self._add_version(
            ctx, name, kind=kind, artifact=str(real), files=files, base=base_version, source="run",
            created_by=requested_by, run_id=run_id, eval_results=dict(eval_results or {}), gates=gates,
            gates_passed=passed, signature=signature, key_id=key_id,
        )
        await self._record(ctx, Tag.MODEL_REGISTER, f"version:{version.id}", model=name, kind=kind, run_id=run_id,
                           digest=version.digest, gates_passed=passed, signed=signature is not None)
        return version

    async def _add_version(self, ctx: Any, name: str, *, kind: str, artifact: str, files: dict[str, str],
                           base: str | None, source: str, created_by: str, family: str | None = None,
                           licence: str | None = None, run_id: str | None = None,
                           eval_results: dict | None = None, gates: dict | None = None, gates_passed: bool = True,
                           signature: str | None = None, key_id: str | None = None) -> ModelVersion:
        if not ALIAS_RE.match(name) or CANARY in name:
            raise BadRequest("a model name uses letters, digits and . _ : / - (at most 128)", param="name")
        async with self.db.session() as s:
            base_row = None
            if base is not None:
                base_row = await s.get(ModelVersion, base)
                if base_row is None:
                    raise NotFound(f"base version {base} does not exist", param="base")
                if base_row.kind not in ("transformers", "gguf"):
                    raise BadRequest("the base of an adapter must be a transformers or GGUF version", param="base")
            if kind == "adapter" and base_row is None:
                raise BadRequest("an adapter version needs a base version", param="base")
            spec = {"backend": "embedded"}
            model = await _model_named(s, name)
            if model is None:
                model = RegisteredModel(name=name, family=family, licence=licence)
                s.add(model)
                await s.flush()
            dig = artifacts.digest(kind, files, base_row.digest if base_row else None, spec)
            if signature is not None:
                key = self.trusted_keys.get(key_id or "")
                if key is None or not artifacts.check_signature(dig, signature, key):
                    raise BadRequest("the signature does not verify with a trusted key", param="signature")
            version = ModelVersion(
                model_id=model.id, number=await _next_number(s, model.id), kind=kind, artifact=artifact,
                files=files, digest=dig, signature=signature, signing_key_id=key_id,
                base_version_id=base_row.id if base_row else None, source=source, run_id=run_id,
                created_by=created_by, spec=spec, eval_results=eval_results or {}, gates=gates or {},
                gates_passed=gates_passed, status="candidate",
            )
            s.add(version)
            await s.flush()
            return version

    # ------------------------------------------------------------------ verification
    async def verify(self, version_id: str) -> None:
        """Raise :class:`artifacts.ArtifactError` unless the version's artifact is exactly what was registered."""
        async with self.db.session() as s:
            v = await s.get(ModelVersion, version_id)
            if v is None:
                raise artifacts.ArtifactError(f"version {version_id} does not exist")
            base = await s.get(ModelVersion, v.base_version_id) if v.base_version_id else None
            checks = [v, *([base] if base is not None else [])]
            rows = [(c.artifact, c.kind, dict(c.files), dict(c.spec), c.digest, c.signature, c.signing_key_id,
                     c.base_version_id) for c in checks]
            base_digests = {c.id: c.digest for c in checks}
        for artifact, kind, files, spec, dig, sig, key_id, base_id in rows:
            await asyncio.to_thread(
                artifacts.verify, artifact=artifact, kind=kind, files=files, spec=spec,
                base_digest=base_digests.get(base_id) if base_id else None, recorded_digest=dig, signature=sig,
                key_id=key_id, trusted=self.trusted_keys,
            )

    async def refuse_tampered(self, ctx: Any, version_id: str, reason: str, *, where: str) -> None:
        """Audit a failed verification (``where``: promote, canary, load on a replica)."""
        await self._record(ctx, Tag.MODEL_ARTIFACT_REJECTED, f"version:{version_id}", decision="deny",
                           reason=reason, where=where)

    # ------------------------------------------------------------------ approvals
    async def _approve_checks(self, ctx: Any, alias: str, version_id: str) -> ModelVersion:
        now = utcnow()
        async with self.db.session() as s:
            v = await s.get(ModelVersion, version_id)
        if v is None:
            raise NotFound(f"version {version_id} does not exist", param="version")
        actor = _actor(ctx)
        if getattr(_principal(ctx), "kind", None) != "user":
            raise await self._deny(ctx, alias, v.id, "an approval comes from a person", "approver_not_a_person")
        if actor == v.created_by:
            raise await self._deny(ctx, alias, v.id, "four-eyes: you imported this version or requested the run "
                                   "that produced it; another person must approve it", "self_approval")
        if v.gate_override_by is not None and actor == v.gate_override_by:
            raise await self._deny(ctx, alias, v.id, "four-eyes: you overrode this version's gates; another "
                                   "person must approve it", "self_approval")
        if not _mfa_fresh(ctx, now):
            raise await self._deny(ctx, alias, v.id, "this action needs a multi-factor check within the last "
                                   "5 minutes; POST /auth/step-up first", "mfa_step_up_required")
        if v.status == "rejected":
            raise await self._deny(ctx, alias, v.id, f"version {v.id} was rejected: {v.status_reason}",
                                   "version_rejected")
        if not v.gates_passed and v.gate_override_by is None:
            failed = sorted(k for k, g in v.gates.items() if not (g or {}).get("passed"))
            raise await self._deny(ctx, alias, v.id, f"version {v.id} failed its gates ({', '.join(failed)}); "
                                   "only a separate gate override can allow it", "gate_failed")
        try:
            await self.verify(v.id)
        except artifacts.ArtifactError as exc:
            await self._reject(v.id, f"artifact check failed: {exc}")
            await self.refuse_tampered(ctx, v.id, str(exc), where="approval")
            raise Conflict(f"version {v.id} was refused: {exc}", code="artifact_tampered") from None
        return v

    async def _reject(self, version_id: str, reason: str) -> None:
        async with self.db.session() as s:
            v = await s.get(ModelVersion, version_id)
            if v is not None and v.status != "production":
                v.status, v.status_reason, v.status_changed_at = "rejected", reason[:1000], utcnow()

    async def promote(self, ctx: Any, alias: str, version_id: str) -> AliasOut:
        """Point ``alias`` at ``version_id`` for all traffic (see the module docstring for the rules)."""
        _check_alias(alias)
        v = await self._approve_checks(ctx, alias, version_id)
        actor = _actor(ctx)
        async with self.db.session() as s:
            row = await _alias(s, alias, lock=True)
            if row is not None and row.version_id == v.id:
                raise Conflict(f"alias {alias} already serves version {v.id}")
            previous = row.version_id if row is not None else None
            row = _flip(s, row, alias, v.model_id, v.id, actor=actor, action="promote")
            fresh = await s.get(ModelVersion, v.id)
            if fresh is None or fresh.digest != v.digest:  # bound to the digest that was checked
                raise Conflict(f"version {v.id} changed while it was being approved")
            fresh.status, fresh.approved_by, fresh.approved_digest = "production", actor, v.digest
            fresh.status_changed_at = utcnow()
            if previous is not None and previous != v.id:
                old = await s.get(ModelVersion, previous)
                if old is not None and old.status == "production" and not await _serves(s, old.id, alias):
                    old.status, old.status_changed_at = "retired", utcnow()
            canary = await _alias(s, alias + CANARY, lock=True)
            if canary is not None and canary.version_id == v.id:  # the canary won: it is the alias now
                _flip(s, canary, alias + CANARY, v.model_id, None, actor=actor, action="canary-end")
            view = alias_view(row)
            await bump_version(s, "models")
        # recorded after the commit (as policy changes are): SQLite has one writer, and the trail is separate
        await self._record(ctx, Tag.MODEL_PROMOTE, f"alias:{alias}", version=v.id, previous=previous,
                           digest=v.digest, generation=view.generation)
        await self._changed(alias)
        return view

    async def set_canary(self, ctx: Any, alias: str, version_id: str | None, *, percent: float | None = None,
                         principals: list[str] | None = None,
                         thresholds: CanaryThresholds | None = None) -> AliasOut:
        """Send ``percent`` % of ``alias``'s requests, and all of ``principals``', to ``version_id``.

        ``percent`` 0 with no principals (or no version) ends the canary. ``thresholds`` (with a limit set) let
        every replica's watcher end it automatically once crossed (:meth:`end_canary_automatically`).
        """
        if thresholds is not None and thresholds.max_error_rate is None and thresholds.max_p99_ratio is None:
            thresholds = None
        _check_alias(alias)
        if percent is not None and not 0 <= percent <= 100:
            raise BadRequest("percent must be within 0..100", param="percent")
        principals = list(principals or [])
        ending = version_id is None or (not percent and not principals)
        actor = _actor(ctx)
        v = None
        if not ending:
            v = await self._approve_checks(ctx, alias, version_id)  # type: ignore[arg-type]
        elif not _mfa_fresh(ctx, utcnow()):
            raise await self._deny(ctx, alias, version_id or "-", "this action needs a multi-factor check within "
                                   "the last 5 minutes; POST /auth/step-up first", "mfa_step_up_required")
        async with self.db.session() as s:
            base = await _alias(s, alias)
            if base is None or base.version_id is None:
                raise NotFound(f"alias {alias} does not exist (promote a version first)", param="alias")
            row = await _alias(s, alias + CANARY, lock=True)
            if v is not None and v.id == base.version_id:
                raise Conflict(f"version {v.id} already serves {alias}; a canary needs another version")
            row = _flip(s, row, alias + CANARY, v.model_id if v else base.model_id, v.id if v else None,
                        actor=actor, action="canary" if v else "canary-end", percent=percent or 0.0,
                        principals=principals)
            row.canary_thresholds = thresholds.dump() if thresholds is not None and v is not None else None
            if v is not None:
                fresh = await s.get(ModelVersion, v.id)
                if fresh is not None and fresh.status == "candidate":
                    fresh.status, fresh.approved_by, fresh.approved_digest = "approved", actor, v.digest
                    fresh.status_changed_at = utcnow()
            view = alias_view(row)
            await bump_version(s, "models")
        await self._record(ctx, Tag.MODEL_CANARY, f"alias:{alias}", version=v.id if v else None,
                           percent=percent or 0.0, principals=principals, generation=view.generation,
                           thresholds=view.thresholds.dump() if view.thresholds else None)
        await self._changed(alias)
        return view

    async def end_canary_automatically(self, alias: str, version_id: str, *, reason: str,
                                       numbers: dict[str, Any], actor: str = "system:canary-watch") -> bool:
        """End ``alias``'s canary of ``version_id`` because its thresholds were crossed (all traffic back to
        production); False when it already ended or changed (another replica got there first).

        Never promotes: promotion stays a person's four-eyes, fresh-MFA act.
        """
        async with self.db.session() as s:
            row = await _alias(s, alias + CANARY, lock=True)
            if row is None or row.version_id != version_id:
                return False
            row = _flip(s, row, alias + CANARY, row.model_id, None, actor=actor, action="canary-auto-rollback",
                        reason=reason[:1000])
            generation = row.generation
            # marked, so whoever looks at the version next (console, `models show`) sees why it left the canary;
            # back to approved, not rejected: a person may try it again (a threshold can trip on a bad minute of
            # infrastructure), but it no longer counts as serving
            v = await s.get(ModelVersion, version_id)
            if v is not None:
                if v.status == "production" and not await _serves(s, v.id, alias + CANARY):
                    v.status = "approved"
                v.status_reason = f"canary rolled back automatically ({utcnow():%Y-%m-%d %H:%M} UTC): {reason}"[:1000]
                v.status_changed_at = utcnow()
            await bump_version(s, "models")
        await self._record(_System(actor), Tag.MODEL_CANARY_AUTO_ROLLBACK, f"alias:{alias}", version=version_id,
                           reason=reason, generation=generation, **numbers)
        await self._changed(alias)
        _log.warning("canary rolled back automatically", alias=alias, version=version_id, reason=reason)
        return True

    async def rollback(self, ctx: Any, alias: str) -> AliasOut:
        """Return ``alias`` to the version it served before the last promotion (and end any canary)."""
        _check_alias(alias)
        if not _mfa_fresh(ctx, utcnow()) and getattr(ctx, "system", False) is not True:
            raise Forbidden("this action needs a multi-factor check within the last 5 minutes; POST /auth/step-up "
                            "first", code="mfa_step_up_required")
        actor = _actor(ctx)
        async with self.db.session() as s:
            row = await _alias(s, alias, lock=True)
            if row is None:
                raise NotFound(f"alias {alias} does not exist", param="alias")
            if row.previous_version_id is None:
                raise Conflict(f"alias {alias} has no previous version to return to")
            target = await s.get(ModelVersion, row.previous_version_id)
            if target is None or target.status == "rejected":
                raise Conflict(f"the previous version of {alias} was rejected; promote another version")
            current = row.version_id
            row = _flip(s, row, alias, target.model_id, target.id, actor=actor, action="rollback")
            target.status, target.status_changed_at = "production", utcnow()
            if current is not None:
                old = await s.get(ModelVersion, current)
                if old is not None and not await _serves(s, old.id, alias):
                    old.status, old.status_changed_at = "retired", utcnow()
            canary = await _alias(s, alias + CANARY, lock=True)
            if canary is not None and canary.version_id is not None:
                _flip(s, canary, alias + CANARY, canary.model_id, None, actor=actor, action="canary-end")
            view = alias_view(row)
            target_id = target.id
            await bump_version(s, "models")
        await self._record(ctx, Tag.MODEL_ROLLBACK, f"alias:{alias}", version=target_id, previous=current,
                           generation=view.generation)
        await self._changed(alias)
        return view

    async def override_gates(self, ctx: Any, version_id: str, reason: str) -> VersionOut:
        """Allow a gate-failed version to be promoted: its own audited, four-eyes action."""
        if not reason.strip():
            raise BadRequest("an override needs a reason", param="reason")
        async with self.db.session() as s:
            v = await s.get(ModelVersion, version_id)
            if v is None:
                raise NotFound(f"version {version_id} does not exist", param="version")
            actor = _actor(ctx)
            if getattr(_principal(ctx), "kind", None) != "user" or actor == v.created_by:
                raise Forbidden("four-eyes: a gate override comes from a person other than the requester",
                                code="self_approval")
            if not _mfa_fresh(ctx, utcnow()):
                raise Forbidden("this action needs a multi-factor check within the last 5 minutes",
                                code="mfa_step_up_required")
            v.gate_override_by, v.gate_override_reason = actor, reason[:1000]
            view = version_view(v)
        await self._record(ctx, Tag.MODEL_GATE_OVERRIDE, f"version:{view.id}", reason=reason,
                           gates=sorted(k for k, g in view.gates.items() if not (g or {}).get("passed")))
        return view

    # ------------------------------------------------------------------ reading
    async def list_models(self) -> list[ModelOut]:
        async with self.db.session() as s:
            models = list((await s.execute(select(RegisteredModel).order_by(RegisteredModel.name))).scalars())
            versions = list((await s.execute(select(ModelVersion).order_by(ModelVersion.number))).scalars())
            aliases = list((await s.execute(select(ModelAlias).order_by(ModelAlias.name))).scalars())
        return [model_view(m, [v for v in versions if v.model_id == m.id],
                           [a for a in aliases if a.model_id == m.id]) for m in models]

    async def show(self, name: str) -> ModelOut:
        """A model by name (or the model an alias serves), with versions, aliases and their history."""
        async with self.db.session() as s:
            m = await _model_named(s, name)
            if m is None:
                a = await _alias(s, name)
                m = await s.get(RegisteredModel, a.model_id) if a is not None and a.model_id else None
            if m is None:
                raise NotFound(f"model {name} does not exist", param="name")
            versions = list((await s.execute(select(ModelVersion).where(ModelVersion.model_id == m.id)
                                              .order_by(ModelVersion.number))).scalars())
            aliases = list((await s.execute(select(ModelAlias).where(ModelAlias.model_id == m.id)
                                             .order_by(ModelAlias.name))).scalars())
            names = [a.name for a in aliases]
            hist = list((await s.execute(select(AliasHistory).where(AliasHistory.alias.in_(names))
                                          .order_by(AliasHistory.created_at, AliasHistory.generation))).scalars())
        view = model_view(m, versions, aliases)
        view.history = [history_view(h) for h in hist]
        return view

    async def get_version(self, version_id: str) -> VersionOut:
        async with self.db.session() as s:
            v = await s.get(ModelVersion, version_id)
        if v is None:
            raise NotFound(f"version {version_id} does not exist", param="version")
        return version_view(v)

    async def history(self, alias: str) -> list[HistoryOut]:
        async with self.db.session() as s:
            rows = (await s.execute(select(AliasHistory).where(AliasHistory.alias.in_([alias, alias + CANARY]))
                                    .order_by(AliasHistory.created_at, AliasHistory.generation))).scalars()
            return [history_view(h) for h in rows]

    async def serving_state(self) -> list[AliasState]:
        """What every replica should serve: each alias's version, how to serve it, and its canary rule."""
        async with self.db.session() as s:
            rows = list((await s.execute(select(ModelAlias))).scalars())
            ids = {r.version_id for r in rows if r.version_id}
            versions = {v.id: v for v in (await s.execute(
                select(ModelVersion).where(ModelVersion.id.in_(ids)))).scalars()} if ids else {}
            bases = {v.base_version_id for v in versions.values() if v.base_version_id}
            if bases:
                for b in (await s.execute(select(ModelVersion).where(ModelVersion.id.in_(bases)))).scalars():
                    versions.setdefault(b.id, b)
            model_ids = {r.model_id for r in rows if r.model_id}
            models = {m.id: m for m in (await s.execute(
                select(RegisteredModel).where(RegisteredModel.id.in_(model_ids)))).scalars()} if model_ids else {}
        out = []
        for r in rows:
            v = versions.get(r.version_id) if r.version_id else None
            m = models.get(r.model_id) if r.model_id else None
            spec = serving_spec(r.name.removesuffix(CANARY), v, versions.get(v.base_version_id) if v and
                                v.base_version_id else None, m) if v is not None else None
            out.append(AliasState(name=r.name, version_id=r.version_id, generation=r.generation, spec=spec,
                                  source=v.source if v is not None else None, changed_at=r.updated_at,
                                  percent=r.percent or 0.0, principals=tuple(r.principals or ()),
                                  thresholds=CanaryThresholds.load(r.canary_thresholds)))
        return sorted(out, key=lambda a: a.name)


class _System:
    """The context of a registry change made by the gateway itself (seeding at start)."""

    system = True
    request_id = None

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.principal = None


def system_context(actor: str) -> Any:
    return _System(actor)


def serving_spec(alias: str, v: ModelVersion, base: ModelVersion | None, m: RegisteredModel | None) -> ModelSpec:
    """How a version is served under ``alias``: the endpoint's own spec, or the embedded backend on its artifact."""
    body: dict[str, Any] = {**v.spec, "alias": alias}
    if body.get("backend") in ("tgi", "openai") and body.pop("adapter", None) is not None:
        # registered before such specs were refused: the upstream never saw it, so it is still not applied
        # (the stored spec, and the digest an approval is bound to, stay as they were)
        _log.warning("version spec names an embedded 'adapter' on an upstream backend; ignored as before",
                     version=v.id, backend=body["backend"])
    if m is not None:
        body["classification"], body["owner"] = m.classification, m.owner
    if v.kind == "transformers":
        body.update(backend="embedded", model=v.artifact)
    elif v.kind == "gguf":
        path = Path(v.artifact or "")
        body.update(backend="embedded", model=str(path.parent), gguf_file=path.name)
    elif v.kind == "adapter" and base is not None:
        model, gguf = (base.artifact, None) if base.kind == "transformers" else (
            str(Path(base.artifact or "").parent), Path(base.artifact or "").name)
        body.update(backend="embedded", model=model, gguf_file=gguf, adapter=v.artifact)
    return parse_spec(body, f"version {v.id}")


def _spec_body(spec: ModelSpec) -> dict[str, Any]:
    body = spec.to_dict()
    body.pop("alias", None)
    return body


def _check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias) or alias.endswith(CANARY):
        raise BadRequest("not an alias name (a canary is set with PUT /admin/aliases/{alias}/canary)",
                         param="alias")


async def _alias(s: Any, name: str, *, lock: bool = False) -> ModelAlias | None:
    q = select(ModelAlias).where(ModelAlias.name == name)
    if lock:
        q = q.with_for_update()
    return (await s.execute(q)).scalar_one_or_none()


async def _model_named(s: Any, name: str) -> RegisteredModel | None:
    return (await s.execute(select(RegisteredModel).where(RegisteredModel.name == name))).scalar_one_or_none()


async def _next_number(s: Any, model_id: str) -> int:
    top = (await s.execute(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model_id))).scalar()
    return int(top or 0) + 1


async def _serves(s: Any, version_id: str, except_alias: str) -> bool:
    """Another alias still serves this version (then it stays in production)."""
    q = select(func.count()).select_from(ModelAlias).where(ModelAlias.version_id == version_id,
                                                           ModelAlias.name != except_alias)
    return bool((await s.execute(q)).scalar())


def _flip(s: Any, row: ModelAlias | None, name: str, model_id: str | None, version_id: str | None, *, actor: str,
          action: str, percent: float | None = None, principals: list[str] | None = None,
          reason: str | None = None) -> ModelAlias:
    """The alias change itself: pointer, previous version, generation, history, in the caller's transaction
    (which then counts a ``models`` change with :func:`bump_version`, its last statement)."""
    now = utcnow()
    if row is None:
        row = ModelAlias(name=name, model_id=model_id, version_id=version_id, generation=1, updated_at=now,
                         updated_by=actor, principals=list(principals or []), percent=percent)
        s.add(row)
        previous = None
    else:
        previous = row.version_id
        if previous != version_id:  # a rollback keeps the version it left, so a second one rolls forward
            row.previous_version_id = previous
        row.model_id, row.version_id = model_id, version_id
        row.generation += 1
        row.updated_at, row.updated_by = now, actor
        if percent is not None or principals is not None:
            row.percent, row.principals = percent, list(principals or [])
    s.add(AliasHistory(alias=name, version_id=version_id, previous_version_id=previous, action=action,
                       actor=actor, generation=row.generation, percent=percent, reason=reason))
    return row
