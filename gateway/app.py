"""``create_app(settings)``: the HTTP face of the composition root (``gateway.services.build_services``).

    request -> request id + metrics (ASGI middleware) -> guard: authenticate, RequestContext, authorize the action
            -> handler (thin: typed body in; ``services`` and ``ctx`` injected) -> domain service -> JSON / SSE

The process's ``Services`` are built once at start-up and reach handlers only through dependency injection
(``services: Services``, ``ctx: RequestContext``) and the guard, which the app makes with them.
"""

from __future__ import annotations

import asyncio
import gc

import structlog
from litestar import Litestar, Request, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from gateway.api import health
from gateway.api.admin_datasets import DATASET_ROUTES
from gateway.api.admin_keys import ADMIN_IDENTITY_ROUTES
from gateway.api.admin_limits import LIMITS_ROUTES
from gateway.api.admin_models import MODEL_ROUTES
from gateway.api.admin_policy import POLICY_ROUTES
from gateway.api.deps import ServicesDep
from gateway.api.guard import context_of, make_authorize
from gateway.api.identity_api import IDENTITY_ROUTES
from gateway.api.openai_api import OpenAIController
from gateway.api.tgi_api import TGIController
from gateway.authz.actions import Action
from gateway.batches.routes import ROUTES as BATCH_ROUTES
from gateway.batches.wiring import BatchDomain
from gateway.console import CONSOLE_ROUTERS, template_config
from gateway.context import RequestContext
from gateway.exceptions import EXCEPTION_HANDLERS
from gateway.logging import configure_logging
from gateway.middleware import request_id_middleware
from gateway.observability import tracing
from gateway.runs.routes import RUN_ROUTES
from gateway.services import Services, build_services
from gateway.settings import Settings, get_settings

_log = structlog.get_logger("palisade.app")


class ServicesHandle:
    """The running process's services: set once by start-up, read by the guard and the ``services`` dependency."""

    def __init__(self) -> None:
        self._services: Services | None = None

    def __call__(self) -> Services:
        if self._services is None:  # only before start-up finished: nothing is served then
            raise RuntimeError("services are not built yet")
        return self._services

    def set(self, services: Services | None) -> None:
        self._services = services


class BatchesHandle:
    """The batch domain (files, batches, feedback) built on the services at start-up: the ``batches`` dependency."""

    def __init__(self) -> None:
        self.domain: BatchDomain | None = None

    def __call__(self) -> BatchDomain:
        if self.domain is None:
            raise RuntimeError("services are not built yet")
        return self.domain


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    handle = ServicesHandle()
    batches = BatchesHandle()

    async def startup(app: Litestar) -> None:
        tracing.configure(settings)  # per worker process (the exporter's thread); no-op unless OTEL_ENDPOINT
        services = await build_services(settings)
        batches.domain = await BatchDomain.open(services)
        handle.set(services)
        app.state.services = handle()  # for in-process tests and embedding (``services_of(app)``)
        # everything built at start (torch, transformers, policies) lives for the whole process: move it out of
        # the collector's generations so full collections stay short on the request path
        gc.collect()
        gc.freeze()
        _log.info("gateway started", settings=settings.describe())

    async def shutdown(app: Litestar) -> None:
        services = handle._services
        if services is None:
            return
        handle.set(None)
        try:
            async with asyncio.timeout(max(5.0, settings.shutdown_grace_s)):
                await services.close()
        except TimeoutError:
            _log.warning("shutdown did not finish in time; exiting anyway")
        tracing.shutdown()  # flush the spans still batched

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
        route_handlers=[
            *health.ROUTES,
            OpenAIController,
            TGIController,
            *IDENTITY_ROUTES,
            *ADMIN_IDENTITY_ROUTES,
            *POLICY_ROUTES,
            *LIMITS_ROUTES,
            *MODEL_ROUTES,
            *DATASET_ROUTES,
            *RUN_ROUTES,
            *BATCH_ROUTES,
            *CONSOLE_ROUTERS,
        ],
        template_config=template_config(),
        guards=[make_authorize(handle)],
        dependencies={
            "services": Provide(handle, sync_to_thread=False, use_cache=True),
            "batches": Provide(batches, sync_to_thread=False, use_cache=True),
            "ctx": Provide(_context_dependency, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[request_id_middleware],
        on_startup=[startup],
        on_shutdown=[shutdown],
        openapi_config=openapi,
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        logging_config=None,  # configure_logging owns logging: JSON lines for every logger
    )


def services_of(app: Litestar) -> Services:
    """The services of a started app (tests and embedding; handlers get them injected)."""
    return app.state.services


def _context_dependency(request: Request, services: ServicesDep) -> RequestContext:
    """The ``ctx`` every guarded handler may ask for: built by the guard after authentication. It names
    ``services`` (unused) so Litestar resolves the two one after the other: two dependencies at the same level
    are resolved concurrently, in an anyio task group that costs two tasks per request."""
    del services
    return context_of(request)
