"""Opening the model domain in a gateway process: registry, seeding from the models file, the replica's sync.

Until settings grow a ``models`` group, two values come from the environment here:
``PALISADE_MODEL_IMPORT_DIRS`` (folders an import may read from, ``:``-separated; default ``<data dir>/imports``)
and the trusted artifact-signing keys in ``<data dir>/trust/models/<key id>.pub``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway.audit.events import AuditTrail
from gateway.db.session import Database
from gateway.models.artifacts import load_trusted_keys
from gateway.models.service import Registry
from gateway.models.spec import ModelSpec, default_specs, load_models_file
from gateway.models.sync import ModelSync
from gateway.settings import Settings


def import_roots(settings: Settings) -> list[Path]:
    raw = os.environ.get("PALISADE_MODEL_IMPORT_DIRS")
    if raw:
        return [Path(p) for p in raw.split(os.pathsep) if p]
    return [Path(settings.data_dir) / "imports"]


def trusted_keys_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "trust" / "models"


def model_specs(settings: Settings) -> list[ModelSpec]:
    """The models file's entries, or the built-in ``chat`` alias."""
    if settings.models_file:
        return load_models_file(settings.models_file)
    return default_specs(settings.embedded_model, settings.embedded_gguf_file)


def open_registry(settings: Settings, db: Database, audit: AuditTrail) -> Registry:
    return Registry(db, audit, import_roots=import_roots(settings),
                    trusted_keys=load_trusted_keys(trusted_keys_dir(settings)))


async def start_models(services: Any, specs: list[ModelSpec]) -> None:
    """Seed the registry from ``specs``, then route every alias to the version the registry names."""
    registry = open_registry(services.settings, services.db, services.audit)
    await registry.seed(specs)
    sync = ModelSync(registry, services.router, services.settings, services.audit)
    await sync.load_initial()
    services.models, services.model_sync = registry, sync
    services.model_attributes = sync.attributes


def follow_model_changes(services: Any) -> None:
    """Once the change feed exists: registry changes are published on it, and this replica follows them."""
    feed = services.change_feed
    services.models.publish = feed.publish
    feed.watch("models", services.model_sync.refresh)
