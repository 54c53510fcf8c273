"""Every replica serves what the ``aliases`` table says: read at start, then on every change event and poll.

A change (promote, canary, rollback) publishes on the change feed (Redis pub/sub; a 1 s poll catches lost
messages and is all there is in embedded mode), and :meth:`ModelSync.refresh` compares each alias's version with
what this process serves. A differing alias is swapped blue/green in the background:

1. verify the artifact (sha256 of every file, signature) — a tampered one is refused and audited;
2. build the new backends beside the old ones, start them (load weights) and warm them (one short generation);
3. :meth:`Router.set_route` points new requests at them; requests and streams already running finish on the old
   endpoints, which the router closes (frees) once drained.
A failure at any step closes what was built and leaves the old version serving; it is audited once and not
retried until the alias changes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from gateway.audit.events import AuditEvent, AuditTrail, Tag
from gateway.inference.base import Backend, GenerationRequest, SamplingParams
from gateway.inference.factory import build_backends
from gateway.inference.router import CANARY_SUFFIX, Router
from gateway.models.artifacts import ArtifactError
from gateway.models.service import Registry
from gateway.models.views import AliasState
from gateway.settings import Settings

_log = structlog.get_logger("palisade.models.sync")


class ModelSync:
    def __init__(self, registry: Registry, router: Router, settings: Settings, audit: AuditTrail) -> None:
        self.registry = registry
        self.router = router
        self.settings = settings
        self.audit = audit
        #: alias -> ABAC / retention attributes of the version it serves (read by inference and /v1/models)
        self.attributes: dict[str, dict[str, Any]] = {}
        #: alias -> (version id, generation) this process serves
        self.applied: dict[str, tuple[str | None, int]] = {}
        self._failed: dict[str, tuple[str | None, int]] = {}
        self._swaps: dict[str, asyncio.Task] = {}
        self._closing = False

    def loading(self) -> list[str]:
        """Aliases whose new version is still loading (``/readyz`` can say so)."""
        return sorted(a for a, t in self._swaps.items() if not t.done())

    # ------------------------------------------------------------------ start
    async def load_initial(self) -> None:
        """Routes for every alias before the router starts (the router starts, i.e. loads, their backends)."""
        for st in await self.registry.serving_state():
            if st.spec is None or st.version_id is None:
                continue
            try:
                await self.registry.verify(st.version_id)
                backends = build_backends(st.spec, self.settings)
            except ArtifactError as exc:
                await self._event(Tag.MODEL_ARTIFACT_REJECTED, st, decision="deny", reason=str(exc), where="start")
                self._failed[st.name] = (st.version_id, st.generation)
                continue
            self.router.set_route(st.name, backends, max_concurrency=st.spec.max_concurrency, version=st.version_id)
            self._applied(st)

    # ------------------------------------------------------------------ follow changes
    async def refresh(self) -> None:
        """The change-feed watcher: start a swap for each alias that differs from what this process serves."""
        states = await self.registry.serving_state()
        for st in states:
            if self._closing:
                return
            if st.name.endswith(CANARY_SUFFIX):
                self._apply_rule(st)
            if self.applied.get(st.name, (None, 0))[0] == st.version_id:
                self.applied[st.name] = (st.version_id, st.generation)
                continue
            if self._failed.get(st.name) == (st.version_id, st.generation):
                continue  # refused or failed to load: the old one serves until the alias changes again
            task = self._swaps.get(st.name)
            if task is not None and not task.done():
                continue  # the next refresh after it finishes looks again
            self._swaps[st.name] = asyncio.get_running_loop().create_task(self._swap(st), name=f"swap-{st.name}")

    def _apply_rule(self, st: AliasState) -> None:
        base = st.name.removesuffix(CANARY_SUFFIX)
        serving = self.applied.get(st.name, (None, 0))[0]
        if st.version_id is None or serving != st.version_id:
            self.router.clear_canary(base)  # not loaded yet (or ended): everything to the base alias
        else:
            self.router.set_canary(base, percent=st.percent, principals=st.principals)

    async def _swap(self, st: AliasState) -> None:
        started = time.perf_counter()
        if st.version_id is None or st.spec is None:  # a canary that ended
            self.router.clear_canary(st.name.removesuffix(CANARY_SUFFIX))
            self.router.remove_route(st.name)
            self.applied[st.name] = (None, st.generation)
            self.attributes.pop(st.name, None)
            return
        backends: list[Backend] = []
        try:
            await self.registry.verify(st.version_id)
            backends = build_backends(st.spec, self.settings, name=f"{st.name}@{st.version_id[:8]}")
            for b in backends:
                await b.start()
            await self._warm(backends)
        except ArtifactError as exc:
            await self._close(backends)
            self._failed[st.name] = (st.version_id, st.generation)
            await self._event(Tag.MODEL_ARTIFACT_REJECTED, st, decision="deny", reason=str(exc), where="load",
                              serving=self.applied.get(st.name, (None, 0))[0])
            _log.error("model artifact refused; the old version keeps serving", alias=st.name, reason=str(exc))
            return
        except asyncio.CancelledError:
            await self._close(backends)
            raise
        except Exception as exc:
            await self._close(backends)
            self._failed[st.name] = (st.version_id, st.generation)
            await self._event(Tag.MODEL_SWAP_FAILED, st, decision="deny", reason=f"{type(exc).__name__}: {exc}"[:500],
                              serving=self.applied.get(st.name, (None, 0))[0])
            _log.error("model load failed; the old version keeps serving", alias=st.name, error=type(exc).__name__)
            return
        previous = self.applied.get(st.name, (None, 0))[0]
        self.router.set_route(st.name, backends, max_concurrency=st.spec.max_concurrency, version=st.version_id)
        self._applied(st)
        if st.name.endswith(CANARY_SUFFIX):
            self._apply_rule(st)
        seconds = round(time.perf_counter() - started, 3)
        _log.info("model swapped", alias=st.name, version=st.version_id, previous=previous, seconds=seconds)
        with contextlib.suppress(Exception):  # the registry change itself was audited; this is the replica's note
            await self._event(Tag.MODEL_SWAP, st, previous=previous, seconds=seconds)

    async def _warm(self, backends: list[Backend]) -> None:
        """One short generation (embedded) or a health probe (upstreams): new traffic never pays the first call."""
        for b in backends:
            if not await b.health():
                raise RuntimeError(f"endpoint {b.name} is not healthy after start")
            if type(b).__name__ == "EmbeddedBackend":
                req = GenerationRequest("warmup", SamplingParams(max_tokens=1, temperature=0.0), prompt="Hello")
                async with asyncio.timeout(120):
                    await b.generate(req)

    async def _close(self, backends: list[Backend]) -> None:
        for b in backends:
            with contextlib.suppress(Exception):
                await b.close()

    def _applied(self, st: AliasState) -> None:
        self.applied[st.name] = (st.version_id, st.generation)
        self._failed.pop(st.name, None)
        if st.spec is not None:
            self.attributes[st.name] = st.spec.attributes()

    async def _event(self, tag: str, st: AliasState, *, decision: str = "allow", **details: Any) -> None:
        await self.audit.record(AuditEvent(tag, actor="system:model-sync", target=f"alias:{st.name}",
                                           decision=decision, details={"version": st.version_id, **details}))

    async def close(self) -> None:
        self._closing = True
        for t in self._swaps.values():
            t.cancel()
        for t in self._swaps.values():
            with contextlib.suppress(BaseException):
                await t
        self._swaps.clear()
