"""``create_app(settings)``: the only place that wires the gateway together."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from gateway.api import health
from gateway.api.openai_api import OpenAIController
from gateway.api.tgi_api import TGIController
from gateway.authz.actions import Action
from gateway.authz.guards import authorize
from gateway.exceptions import EXCEPTION_HANDLERS
from gateway.logging import configure_logging
from gateway.middleware import request_id_middleware
from gateway.settings import Settings, get_settings

_log = structlog.get_logger("palisade.app")

async def build_services(settings: Settings) -> Any:
    from gateway.audit.log import LogAuditTrail
    from gateway.authn.apikeys import ApiKeyService
    from gateway.authn.authenticator import Authenticator
    from gateway.authz.decision import RoleAuthorizer
    from gateway.db.session import Database
    from gateway.inference.factory import default_models, load_models_file
    from gateway.inference.router import Router as InferenceRouter
    from gateway.inference.service import InferenceService
    from gateway.limits.unlimited import UnlimitedLimiter
    from gateway.services import Services

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings)
    redis = None
    if settings.redis_url:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    audit = LogAuditTrail()
    keys = ApiKeyService(db)
    services = Services(
        settings=settings, db=db, audit=audit, keys=keys, authenticator=Authenticator(keys, audit),
        authorizer=RoleAuthorizer(), limiter=UnlimitedLimiter(), router=InferenceRouter(settings), redis=redis,
    )
    services.inference = InferenceService(services)
    specs = load_models_file(settings.models_file) if settings.models_file else default_models(settings)
    await services.load_models(specs)
    return services


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    async def startup(app: Litestar) -> None:
        app.state.services = await build_services(settings)
        await app.state.services.router.start()
        _log.info("gateway started", settings=settings.describe())

    async def shutdown(app: Litestar) -> None:
        services = getattr(app.state, "services", None)
        if services is None:
            return
        await services.router.close()
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
        route_handlers=[*health.ROUTES, OpenAIController, TGIController],
        guards=[authorize],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[request_id_middleware],
        on_startup=[startup],
        on_shutdown=[shutdown],
        openapi_config=openapi,
        request_max_body_size=settings.max_body_bytes,
        state=State({"settings": settings}),
        debug=False,
    )
