"""Health (alive), readiness (db, redis, audit, backends) and Prometheus metrics: the public operational routes."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.authz.actions import Action
from gateway.metrics import REGISTRY

PUBLIC = {"action": Action.PUBLIC}


@get("/healthz", opt=PUBLIC, operation_id="healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", opt=PUBLIC, operation_id="readyz", tags=["health"])
async def readyz(request: Request) -> Response[dict[str, Any]]:
    services = request.app.state.services
    checks: dict[str, Any] = {"database": await services.db.ping()}
    if services.redis is not None:
        try:
            checks["redis"] = bool(await services.redis.ping())
        except Exception:
            checks["redis"] = False
    checks["backends"] = {
        alias: any(e["healthy"] for e in endpoints) for alias, endpoints in services.router.status().items()
    }
    audit_ready = getattr(services.audit, "ready", None)  # the durable chain; a placeholder trail has none
    if audit_ready is not None:
        checks["audit"] = await audit_ready()
    ok = (
        checks["database"]
        and checks.get("redis", True)
        and checks.get("audit", True)
        and all(checks["backends"].values())
    )
    return Response({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


@get("/metrics", opt=PUBLIC, operation_id="metrics", tags=["health"], media_type=CONTENT_TYPE_LATEST)
async def metrics() -> Response[bytes]:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, readyz, metrics]
