"""``create_app(settings)``: the only place that wires the gateway together."""

from __future__ import annotations

import gc

import structlog
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from gateway.api import health
from gateway.api.admin_keys import ADMIN_IDENTITY_ROUTES
from gateway.api.admin_limits import LIMITS_ROUTES
from gateway.api.admin_policy import POLICY_ROUTES
from gateway.api.identity_api import IDENTITY_ROUTES
from gateway.api.openai_api import OpenAIController
from gateway.api.tgi_api import TGIController
from gateway.audit.chain import AuditChain
from gateway.authn.apikeys import ApiKeyService
from gateway.authn.authenticator import Authenticator
from gateway.authn.identity import Identity
from gateway.authz.actions import Action
from gateway.authz.guards import authorize
from gateway.authz.wiring import (
    build_authorizer,
    start_authorization_and_limits,
    stop_authorization_and_limits,
)
from gateway.crypto import open_keyring
from gateway.db.session import Database
from gateway.exceptions import EXCEPTION_HANDLERS
from gateway.inference.factory import default_models, load_models_file
from gateway.inference.router import Router as InferenceRouter
from gateway.inference.service import InferenceService
from gateway.logging import configure_logging
from gateway.middleware import request_id_middleware
from gateway.services import Services
from gateway.settings import Settings, get_settings

_log = structlog.get_logger("palisade.app")

async def build_services(settings: Settings) -> Services:
    """Every long-lived component, in dependency order: db -> keyring -> audit -> identity -> models -> policy."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings)
    keyring = await open_keyring(settings, db)
    redis = None
    if settings.redis_url:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    audit = await AuditChain.open(settings, db, keyring)  # hash-chained, durable, fail-closed
    keys = ApiKeyService(db)
    services = Services(
        settings=settings, db=db, audit=audit, keys=keys, authenticator=Authenticator(keys, audit),
        authorizer=build_authorizer(settings), router=InferenceRouter(settings), redis=redis, keyring=keyring,
    )
    services.inference = InferenceService(services)
    services.identity = Identity(settings, db, keyring=keyring, redis=redis)
    await services.identity.start()
    services.identity.install(services)
    specs = load_models_file(settings.models_file) if settings.models_file else default_models(settings)
    await services.load_models(specs)
    await start_authorization_and_limits(services)  # policy store -> Casbin, limits config -> limiter
    return services


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    async def startup(app: Litestar) -> None:
        app.state.services = await build_services(settings)
        await app.state.services.router.start()
        # everything built at start (torch, transformers, policies, models) lives for the whole process: move it
        # out of the collector's generations so full collections stay short on the request path
        gc.collect()
        gc.freeze()
        _log.info("gateway started", settings=settings.describe())

    async def shutdown(app: Litestar) -> None:
        services = getattr(app.state, "services", None)
        if services is None:
            return
        await stop_authorization_and_limits(services)
        await services.router.close()
        if hasattr(services.audit, "close"):
            await services.audit.close()  # flush queued records, sign a final checkpoint
        if services.identity is not None:
            await services.identity.close()
        if services.redis is not None:
            await services.redis.aclose()
        await services.db.close()

    openapi = OpenAPIConfig(
        title="Palisade gateway",
        version="0.1.0",
        description="Zero-trust inference gateway: OpenAI- and TGI-compatible APIs.",
        path="/schema",
        render_plugins=[SwaggerRenderPlugin()],
        openapi_router=Router(path="/schema", route_handlers=[], opt={"action": Action.SCHEMA_READ}),
        components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
        security=[{"bearer": []}],
    )
    return Litestar(
        route_handlers=[*health.ROUTES, OpenAIController, TGIController, *IDENTITY_ROUTES, *ADMIN_IDENTITY_ROUTES,
                        *POLICY_ROUTES, *LIMITS_ROUTES],
        guards=[authorize],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[request_id_middleware],
        on_startup=[startup],
        on_shutdown=[shutdown],
        openapi_config=openapi,
        request_max_body_size=settings.max_body_bytes,
        state=State({"settings": settings}),
        debug=False,
        logging_config=None,  # configure_logging owns logging: JSON lines for every logger
    )
