"""``ModelCatalog``: the one owner of model state in a gateway process.

The models file (or the built-in default) seeds the ``model_aliases`` table; the catalog reads the table back and
feeds the router from it, so what serves an alias, its ABAC attributes (classification, owner), its audit retention
and its sampling defaults all come from one place. Embedded models load in the background: the process answers
``/healthz`` at once, ``/readyz`` names the aliases still loading, and SIGTERM is honoured during a load.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select

from gateway.db.registry import ModelAlias
from gateway.db.session import Database
from gateway.inference.factory import build_backends
from gateway.inference.router import Router
from gateway.settings import Settings

_log = structlog.get_logger("palisade.models")

#: sampling parameters a request may omit and a model may default (as vLLM applies generation_config)
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens")
#: the built-in SmolLM2-135M-Instruct: its authors' recommended sampling (a 135M model wanders at temperature 1)
BUILTIN_DEFAULTS = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 256}


@dataclass(slots=True)
class ModelEntry:
    alias: str
    spec: dict[str, Any]
    classification: str = "internal"
    owner: str | None = None
    retain_content: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    state: str = "loading"  # loading | ready | failed
    error: str | None = None

    def attributes(self) -> dict[str, Any]:
        """ABAC resource attributes of the alias."""
        return {"classification": self.classification, "owner": self.owner}


class ModelCatalog:
    def __init__(self, settings: Settings, db: Database, router: Router) -> None:
        self.settings = settings
        self.db = db
        self.router = router
        self.entries: dict[str, ModelEntry] = {}
        self._loads: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ reading
    def get(self, alias: str) -> ModelEntry | None:
        return self.entries.get(alias)

    def aliases(self) -> list[str]:
        return sorted(self.entries)

    def attributes(self, alias: str) -> dict[str, Any]:
        entry = self.entries.get(alias)
        return entry.attributes() if entry else {"classification": "internal", "owner": None}

    def loading(self) -> list[str]:
        return sorted(a for a, e in self.entries.items() if e.state == "loading")

    def failed(self) -> dict[str, str]:
        return {a: e.error or "failed" for a, e in self.entries.items() if e.state == "failed"}

    # ------------------------------------------------------------------ seeding and loading
    async def seed(self, specs: list[dict[str, Any]]) -> None:
        """Write the models-file entries into the table, then read every enabled alias back from it."""
        async with self.db.session() as s:
            existing = {m.alias: m for m in (await s.execute(select(ModelAlias))).scalars()}
            for spec in specs:
                row = existing.get(spec["alias"])
                clean = {k: v for k, v in spec.items() if k != "alias"}
                if row is None:
                    s.add(
                        ModelAlias(
                            alias=spec["alias"],
                            backend=spec["backend"],
                            spec=clean,
                            classification=spec.get("classification", "internal"),
                            owner=spec.get("owner"),
                        )
                    )
                else:
                    row.backend, row.spec, row.enabled = spec["backend"], clean, True
                    row.classification = spec.get("classification", row.classification)
                    row.owner = spec.get("owner", row.owner)
        seeded = {spec["alias"] for spec in specs}
        async with self.db.session() as s:
            rows = (await s.execute(select(ModelAlias).where(ModelAlias.enabled.is_(True)))).scalars().all()
        for row in rows:
            if row.alias not in seeded:
                continue  # an alias the current models file no longer names stays in the table, unserved
            spec = {"alias": row.alias, "backend": row.backend, **row.spec}
            self.entries[row.alias] = ModelEntry(
                alias=row.alias,
                spec=spec,
                classification=row.classification,
                owner=row.owner,
                retain_content=bool(spec.get("retain_content", False)),
                defaults=sampling_defaults(spec),
                version=spec.get("version"),
            )
        _log.info("models seeded", aliases=sorted(self.entries))

    def start_loading(self) -> None:
        """Build every alias's backends in the background (the gateway); remote backends are ready at once."""
        for alias in self.entries:
            self._task_for(alias)

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
            backends = build_backends(entry.spec, self.settings)
            await asyncio.gather(*(b.start() for b in backends))  # embedded: load weights (a daemon thread)
            # routed only once started: until then a request gets "loading" (503), never a half-built backend
            self.router.set_route(entry.alias, backends, max_concurrency=int(entry.spec.get("max_concurrency", 64)))
            entry.state = "ready"
            _log.info("model ready", alias=entry.alias)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            entry.state, entry.error = "failed", f"{type(exc).__name__}: {exc}"[:300]
            _log.error("model failed to load", alias=entry.alias, error=entry.error)

    async def close(self) -> None:
        for task in self._loads.values():
            task.cancel()
        await asyncio.gather(*self._loads.values(), return_exceptions=True)


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
