"""``ModelCatalog``: the one owner of model state in a gateway process, fed from the registry's tables.

The models file (or the built-in default) seeds the registry (``gateway.models.service.Registry``): each entry is
an ``endpoint`` version its alias points at. The catalog reads the aliases back and feeds the router from them,
so what serves an alias, its version, its ABAC attributes (classification, owner), its audit retention and its
sampling defaults all come from one place. Embedded models load in the background: the process answers
``/healthz`` at once, ``/readyz`` names the aliases still loading, and SIGTERM is honoured during a load.

Afterwards the catalog follows the registry (:meth:`ModelCatalog.refresh`, a change-feed watcher: Redis pub/sub
plus a 1 s poll, so every replica learns a promotion within 2 s). An alias whose version changed is swapped
blue/green in the background:

1. verify the artifact (sha256 of every file, signature) -- a tampered one is refused and audited;
2. build the new backends beside the old ones, start them (load weights) and warm them (one short generation);
3. ``Router.set_route`` sends new requests to them; requests and streams already running finish on the old
   endpoints, which the router closes (frees) once drained.
A failure at any step closes what was built and leaves the old version serving; it is audited once and not
retried until the alias changes again. A canary is the alias ``<alias>@canary`` plus the router's rule.

Canary watch (:meth:`ModelCatalog.check_canaries`, every ``canary_check_s`` in a serving process): a canary set
with thresholds is judged on this replica's window of both versions (``gateway.models.canary``); on a breach the
registry ends it (the first replica to decide wins, the others find it already ended), audited and published on
the change feed, so every replica stops routing to it. Only rollback is automatic, never promotion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from gateway.audit.events import AuditEvent, AuditTrail, Tag
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.errors import NotFound
from gateway.inference.base import Backend, GenerationRequest, SamplingParams
from gateway.inference.factory import build_backends
from gateway.inference.router import CANARY_SUFFIX, Router
from gateway.models.artifacts import ArtifactError, load_trusted_keys
from gateway.models.canary import CanaryReport, CanaryThresholds, judge, p99_ratio, verdict
from gateway.models.service import Publish, Registry
from gateway.models.spec import ModelSpec
from gateway.models.views import AliasState
from gateway.settings import Settings

_log = structlog.get_logger("palisade.models")
#: names this process in its swap events (one per replica)
_REPLICA = f"{socket.gethostname()}:{os.getpid()}"

#: sampling parameters a request may omit and a model may default (as vLLM applies generation_config)
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens")
#: the built-in SmolLM2-135M-Instruct, quantised: greedy by default -- it wanders at temperature 1, and now and then
#: even at its card's 0.2 ("L'Étoile, the capital of France"); a client that wants variety sends a temperature
BUILTIN_DEFAULTS = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 256}


def import_roots(settings: Settings) -> list[Path]:
    """Folders an import may read from (``PALISADE_MODEL_IMPORT_DIRS``; default ``<data dir>/imports``)."""
    if settings.model_import_dirs:
        return [Path(p) for p in settings.model_import_dirs.split(":") if p]
    return [Path(settings.data_dir) / "imports"]


def trusted_keys_dir(settings: Settings) -> Path:
    """``<key id>.pub`` files: the Ed25519 keys (the trainer's) whose artifact signatures count."""
    return Path(settings.data_dir) / "trust" / "models"


@dataclass(slots=True)
class ModelEntry:
    """One alias as this process serves it (``version``); a swap replaces the fields once the new one is in."""

    alias: str
    spec: ModelSpec
    version: str | None = None
    generation: int = 0
    classification: str = "internal"
    owner: str | None = None
    retain_content: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    state: str = "loading"  # loading | ready | failed
    error: str | None = None

    def attributes(self) -> dict[str, Any]:
        """ABAC resource attributes of the alias."""
        return {"classification": self.classification, "owner": self.owner}

    @classmethod
    def of(cls, st: AliasState, state: str = "loading") -> ModelEntry:
        assert st.spec is not None
        entry = cls(alias=st.name, spec=st.spec, state=state)
        entry.take(st)
        return entry

    def take(self, st: AliasState) -> None:
        assert st.spec is not None
        self.spec, self.version, self.generation = st.spec, st.version_id, st.generation
        self.classification, self.owner = st.spec.classification, st.spec.owner
        self.retain_content = st.spec.retain_content
        self.defaults = sampling_defaults(st.spec.to_dict())


class ModelCatalog:
    def __init__(
        self, settings: Settings, db: Database, router: Router, audit: AuditTrail, *, publish: Publish | None = None
    ) -> None:
        self.settings = settings
        self.router = router
        self.audit = audit
        #: the registry's rules (import, promote, canary, rollback); it publishes its changes on the feed
        self.registry = Registry(db, audit, import_roots=import_roots(settings),
                                 trusted_keys=load_trusted_keys(trusted_keys_dir(settings)), publish=publish)
        self.entries: dict[str, ModelEntry] = {}
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._swaps: dict[str, asyncio.Task[None]] = {}
        #: alias -> (version, generation) that was refused or failed to load: not retried until the alias changes
        self._failed: dict[str, tuple[str | None, int]] = {}
        self._seeded: set[str] = set()
        #: base alias -> (percent, principals) of its canary, as the registry says
        self._rules: dict[str, tuple[float, tuple[str, ...]]] = {}
        #: base alias -> the thresholds set with its canary (absent: watched by hand)
        self._limits: dict[str, CanaryThresholds] = {}
        self._watch: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------------ reading
    def get(self, alias: str) -> ModelEntry | None:
        return self.entries.get(alias)

    def aliases(self) -> list[str]:
        """The aliases clients call (a canary is reached through its alias, not listed on its own)."""
        return sorted(a for a in self.entries if not a.endswith(CANARY_SUFFIX))

    def attributes(self, alias: str) -> dict[str, Any]:
        entry = self.entries.get(alias)
        return entry.attributes() if entry else {"classification": "internal", "owner": None}

    def loading(self) -> list[str]:
        """Aliases with nothing to serve yet (a swap is not loading: the old version serves meanwhile)."""
        return sorted(a for a, e in self.entries.items() if e.state == "loading")

    def swapping(self) -> list[str]:
        """Aliases whose next version is loading beside the one serving."""
        return sorted(a for a, t in self._swaps.items() if not t.done())

    def failed(self) -> dict[str, str]:
        return {a: e.error or "failed" for a, e in self.entries.items() if e.state == "failed"}

    # ------------------------------------------------------------------ seeding and loading
    async def seed(self, specs: list[ModelSpec]) -> None:
        """Seed the registry from the models file, then read every alias back from it."""
        await self.registry.seed(specs)
        self._seeded = {s.alias for s in specs}
        for st in await self.registry.serving_state():
            self._note_rule(st)
            if self._serves(st):
                self.entries[st.name] = ModelEntry.of(st)
        _log.info("models seeded", aliases=sorted(self.entries))

    def _serves(self, st: AliasState) -> bool:
        """An alias with a version; one the current models file no longer names stays in the table, unserved.

        A canary is always set by a person through the registry, so it is served whatever its version's source
        (an upstream endpoint from the models file can be the canary of another alias)."""
        if st.spec is None or st.version_id is None:
            return False
        return st.source != "models-file" or st.name in self._seeded or st.name.endswith(CANARY_SUFFIX)

    def start_loading(self) -> None:
        """Build every alias's backends in the background (the gateway); remote backends are ready at once."""
        for alias in list(self.entries):
            self._task_for(alias)
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_canaries(), name="canary-watch")

    async def ensure_loaded(self, alias: str) -> None:
        """Load one alias now if nothing has yet (a worker loads only the models its jobs call)."""
        if alias in self.entries:
            await asyncio.shield(self._task_for(alias))

    def _task_for(self, alias: str) -> asyncio.Task[None]:
        task = self._loads.get(alias)
        if task is None:
            task = self._loads[alias] = asyncio.create_task(self._load(self.entries[alias]), name=f"load:{alias}")
        return task

    async def wait_loaded(self) -> None:
        if self._loads:
            await asyncio.gather(*self._loads.values(), return_exceptions=True)

    async def _load(self, entry: ModelEntry) -> None:
        try:
            backends = await self._prepare(entry.alias, entry.version, entry.spec, warm=False)
            # routed only once started: until then a request gets "loading" (503), never a half-built backend
            self.router.set_route(entry.alias, backends, max_concurrency=entry.spec.max_concurrency,
                                  version=entry.version)
            entry.state = "ready"
            self._apply_canary_rule(entry.alias)
            _log.info("model ready", alias=entry.alias, version=entry.version)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            entry.state, entry.error = "failed", f"{type(exc).__name__}: {exc}"[:300]
            self._failed[entry.alias] = (entry.version, entry.generation)
            tag = Tag.MODEL_ARTIFACT_REJECTED if isinstance(exc, ArtifactError) else Tag.MODEL_SWAP_FAILED
            with contextlib.suppress(Exception):
                await self._event(tag, entry.alias, entry.version, reason=entry.error, where="start")
            _log.error("model failed to load", alias=entry.alias, error=entry.error)

    async def _prepare(self, alias: str, version: str | None, spec: ModelSpec, *, warm: bool,
                       name: str | None = None) -> list[Backend]:
        """Verified, built, started (and warmed) backends for ``version``; closed again if any step fails."""
        if version is not None:
            await self.registry.verify(version)  # before any byte of the artifact reaches a loader
        backends = build_backends(spec, self.settings, name=name)
        try:
            await asyncio.gather(*(b.start() for b in backends))  # embedded: load weights (a daemon thread)
            if warm:
                await self._warm(backends)
        except BaseException:
            await _close(backends)
            raise
        return backends

    async def _warm(self, backends: list[Backend]) -> None:
        """One short generation (embedded) or a health probe (upstreams): new traffic never pays the first call."""
        for b in backends:
            if not await b.health():
                raise RuntimeError(f"endpoint {b.name} is not healthy after start")
            if type(b).__name__ == "EmbeddedBackend":
                req = GenerationRequest("warmup", SamplingParams(max_tokens=1, temperature=0.0), prompt="Hello")
                async with asyncio.timeout(120):
                    await b.generate(req)

    # ------------------------------------------------------------------ following the registry
    async def refresh(self) -> None:
        """The change-feed watcher: swap every alias this process serves whose version changed."""
        if self._closing:
            return
        states = {st.name: st for st in await self.registry.serving_state()}
        for name, st in states.items():
            self._note_rule(st)
            entry = self.entries.get(name)
            if entry is None:
                if self._serves(st):  # a new alias (a first promotion, a canary): served like the others
                    self.entries[name] = ModelEntry.of(st)
                    if self._loads:  # this process serves (not a CLI or a worker that loads on demand)
                        self._task_for(name)
                continue
            if st.version_id is None:  # a canary that ended
                self._end_canary(name)
                continue
            if entry.version == st.version_id:
                entry.generation = st.generation
                self._apply_canary_rule(name)
                continue
            load = self._loads.get(name)
            if load is None:  # never loaded here: the next load takes the new version
                entry.take(st)
                continue
            if not load.done() or self._failed.get(name) == (st.version_id, st.generation):
                continue
            swap = self._swaps.get(name)
            if swap is not None and not swap.done():
                continue  # the next refresh after it finishes looks again
            self._swaps[name] = asyncio.create_task(self._swap(entry, st), name=f"swap:{name}")

    def _note_rule(self, st: AliasState) -> None:
        if st.name.endswith(CANARY_SUFFIX) and st.version_id is not None:
            base = st.name.removesuffix(CANARY_SUFFIX)
            self._rules[base] = (st.percent, st.principals)
            if st.thresholds is not None:
                self._limits[base] = st.thresholds
            else:
                self._limits.pop(base, None)

    def _apply_canary_rule(self, alias: str) -> None:
        """The router sends a share to ``<alias>@canary`` only while that canary is loaded here."""
        base = alias.removesuffix(CANARY_SUFFIX)
        canary = self.entries.get(base + CANARY_SUFFIX)
        rule = self._rules.get(base)
        if canary is None or canary.state != "ready" or rule is None:
            self.router.clear_canary(base)
        else:
            self.router.set_canary(base, percent=rule[0], principals=rule[1])

    def _end_canary(self, name: str) -> None:
        base = name.removesuffix(CANARY_SUFFIX)
        self.router.clear_canary(base)
        self.router.remove_route(name)
        self.entries.pop(name, None)
        self._rules.pop(base, None)
        self._limits.pop(base, None)
        task = self._loads.pop(name, None)
        if task is not None:
            task.cancel()

    async def _swap(self, entry: ModelEntry, st: AliasState) -> None:
        assert st.spec is not None
        started = time.perf_counter()
        learned_s = (utcnow() - st.changed_at).total_seconds() if st.changed_at else None
        previous = entry.version
        try:
            backends = await self._prepare(st.name, st.version_id, st.spec, warm=True,
                                           name=f"{st.name}@{(st.version_id or '')[:8]}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed[st.name] = (st.version_id, st.generation)
            tag = Tag.MODEL_ARTIFACT_REJECTED if isinstance(exc, ArtifactError) else Tag.MODEL_SWAP_FAILED
            reason = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
            _log.error("model swap refused; the old version keeps serving", alias=st.name, reason=reason[:300])
            with contextlib.suppress(Exception):
                await self._event(tag, st.name, st.version_id, reason=reason[:500], where="load", serving=previous)
            return
        self.router.set_route(st.name, backends, max_concurrency=st.spec.max_concurrency, version=st.version_id)
        entry.take(st)
        entry.state, entry.error = "ready", None
        self._failed.pop(st.name, None)
        self._apply_canary_rule(st.name)
        seconds = round(time.perf_counter() - started, 3)
        # learned: from the alias flip to this replica starting the swap (the change feed's part, within 2 s);
        # seconds: verify + load + warm (the model's part)
        learned = round(learned_s, 3) if learned_s is not None else None
        _log.info("model swapped", alias=st.name, version=st.version_id, previous=previous, seconds=seconds,
                  learned_after_s=learned)
        with contextlib.suppress(Exception):  # the registry change itself was audited; this is the replica's note
            await self._event(Tag.MODEL_SWAP, st.name, st.version_id, previous=previous, seconds=seconds,
                              learned_after_s=learned, replica=_REPLICA)

    # ------------------------------------------------------------------ canary watch
    async def _watch_canaries(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.canary_check_s)
            try:
                await self.check_canaries()
            except Exception:  # never let the watch die; the next round looks again
                _log.exception("canary check failed")

    async def check_canaries(self) -> list[str]:
        """End every canary (served here) whose thresholds this replica's window shows crossed; the aliases."""
        ended: list[str] = []
        for base, limits in list(self._limits.items()):
            canary, production = self.entries.get(base + CANARY_SUFFIX), self.entries.get(base)
            if limits.auto != "rollback" or canary is None or canary.state != "ready" or canary.version is None:
                continue
            ours = self.router.stats.window(base, canary.version)
            theirs = self.router.stats.window(base, production.version if production else None)
            breach = judge(limits, ours, theirs)
            if breach is None:
                continue
            numbers = {"canary": msgspec.to_builtins(ours), "production": msgspec.to_builtins(theirs),
                       "p99_ratio": p99_ratio(ours, theirs), "thresholds": limits.dump(),
                       "window_s": self.router.stats.window_s, "replica": _REPLICA}
            if await self.registry.end_canary_automatically(base, canary.version, reason=breach, numbers=numbers):
                ended.append(base)
        if ended:
            await self.refresh()  # this replica stops routing to it now; the others learn it from the feed
        return ended

    async def canary_report(self, alias: str) -> CanaryReport:
        """Production and canary side by side over the same window, with the thresholds and the verdict."""
        states = {st.name: st for st in await self.registry.serving_state()}
        base = states.get(alias)
        if base is None or base.version_id is None:
            raise NotFound(f"alias {alias} does not exist", param="alias")
        st = states.get(alias + CANARY_SUFFIX)
        if st is not None and st.version_id is None:
            st = None
        stats = self.router.stats
        production = stats.window(alias, base.version_id)
        canary = stats.window(alias, st.version_id) if st is not None else None
        limits = st.thresholds if st is not None else None
        return CanaryReport(
            alias=alias, replica=_REPLICA, window_s=stats.window_s, production=production, canary=canary,
            percent=st.percent if st is not None else None, principals=list(st.principals) if st else [],
            thresholds=limits, p99_ratio=p99_ratio(canary, production) if canary is not None else None,
            verdict=verdict(limits, canary, production),
        )

    async def _event(self, tag: str, alias: str, version: str | None, **details: Any) -> None:
        decision = "allow" if tag == Tag.MODEL_SWAP else "deny"
        await self.audit.record(AuditEvent(tag, actor="system:models", target=f"alias:{alias}", decision=decision,
                                           details={"version": version, **details}))

    async def close(self) -> None:
        self._closing = True
        tasks = [*self._loads.values(), *self._swaps.values(), *([self._watch] if self._watch else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close(backends: list[Backend]) -> None:
    for b in backends:
        with contextlib.suppress(Exception):
            await b.close()


def sampling_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The model's own defaults (its generation_config.json, or the built-in's recommended ones), overridden by
    the models file's ``defaults:``."""
    out: dict[str, Any] = {}
    model = str(spec.get("model") or "")
    if spec.get("backend") == "embedded":
        if model.startswith("builtin:"):
            out.update(BUILTIN_DEFAULTS)
        elif model:
            out.update(_generation_config(Path(model)))
    out.update({k: v for k, v in (spec.get("defaults") or {}).items() if k in SAMPLING_KEYS})
    return out


def _generation_config(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "generation_config.json").read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, Any] = {}
    if cfg.get("do_sample") is False:
        out["temperature"] = 0.0
    elif isinstance(cfg.get("temperature"), int | float):
        out["temperature"] = float(cfg["temperature"])
    if isinstance(cfg.get("top_p"), int | float):
        out["top_p"] = float(cfg["top_p"])
    return out
