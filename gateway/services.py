"""Every long-lived component of one gateway process, built once from settings (the composition root's data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select

from gateway.audit.events import AuditTrail
from gateway.authn.apikeys import ApiKeyService
from gateway.authn.authenticator import Authenticator
from gateway.authz.decision import Authorizer
from gateway.db.registry import ModelAlias
from gateway.db.session import Database
from gateway.inference.router import Router
from gateway.limits import Limiter
from gateway.settings import Settings

_log = structlog.get_logger("palisade.services")


@dataclass
class Services:
    settings: Settings
    db: Database
    audit: AuditTrail
    keys: ApiKeyService
    authenticator: Authenticator
    authorizer: Authorizer
    router: Router
    #: set by gateway.authz.wiring.start_authorization_and_limits (needs the router for load shedding)
    limiter: Limiter = None  # type: ignore[assignment]
    inference: Any = None
    redis: Any = None
    #: gateway.crypto.Keyring: envelope encryption (AES-256-GCM) and HMACs; data keys loaded at start
    keyring: Any = None
    #: gateway.authn.identity.Identity: clients, tokens, people, sessions
    identity: Any = None
    #: authorization and limits: versioned policy store, limits config, change events, usage baselines
    policy_store: Any = None
    limits_config: Any = None
    change_feed: Any = None
    usage_watch: Any = None
    #: alias -> attributes (classification, owner) for ABAC and /v1/models
    model_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def load_models(self, specs: list[dict[str, Any]]) -> None:
        """Seed aliases from the models file into the registry table, then build their backends."""
        from gateway.inference.factory import build_backends

        async with self.db.session() as s:
            existing = {m.alias: m for m in (await s.execute(select(ModelAlias))).scalars()}
            for spec in specs:
                row = existing.get(spec["alias"])
                clean = {k: v for k, v in spec.items() if k != "alias"}
                if row is None:
                    s.add(ModelAlias(alias=spec["alias"], backend=spec["backend"], spec=clean,
                                     classification=spec.get("classification", "internal"),
                                     owner=spec.get("owner")))
                else:
                    row.backend, row.spec = spec["backend"], clean
                    row.classification = spec.get("classification", row.classification)
        for spec in specs:
            backends = build_backends(spec, self.settings)
            self.router.set_route(spec["alias"], backends, max_concurrency=int(spec.get("max_concurrency", 64)))
            self.model_attributes[spec["alias"]] = {
                "classification": spec.get("classification", "internal"), "owner": spec.get("owner"),
                "retain_content": bool(spec.get("retain_content", False)),
            }
        _log.info("models loaded", aliases=[s["alias"] for s in specs])
