"""Health (alive), readiness (db, redis, audit, backends) and Prometheus metrics: the public operational routes."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.deps import ServicesDep
from gateway.authz.actions import Action
from gateway.metrics import REGISTRY

PUBLIC = {"action": Action.PUBLIC}


@get("/healthz", opt=PUBLIC, operation_id="healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", opt=PUBLIC, operation_id="readyz", tags=["health"])
async def readyz(services: ServicesDep) -> Response[dict[str, Any]]:
    checks: dict[str, Any] = {"database": await services.db.ping()}
    if services.redis is not None:
        try:
            checks["redis"] = bool(await services.redis.ping())
        except Exception:
            checks["redis"] = False
    checks["backends"] = {
        alias: any(e["healthy"] for e in endpoints) for alias, endpoints in services.router.status().items()
    }
    loading, failed = services.models.loading(), services.models.failed()
    checks["models"] = {"loading": loading, "failed": sorted(failed)}
    checks["audit"] = await services.audit.ready()
    ok = (
        checks["database"]
        and checks.get("redis", True)
        and checks["audit"]
        and all(checks["backends"].values())
        and not loading
        and not failed
    )
    return Response({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


@get("/metrics", opt=PUBLIC, operation_id="metrics", tags=["health"], media_type=CONTENT_TYPE_LATEST)
async def metrics() -> Response[bytes]:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, readyz, metrics]
