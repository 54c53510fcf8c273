"""The outermost ASGI layer: request id, metrics and one access-log line per request.

Pure ASGI (no per-request objects beyond a closure) because it sits on every request's hot path.
"""

from __future__ import annotations

import re
import secrets
import time

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import LATENCY, REQUESTS, child
from gateway.observability import tracing

_VALID_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_log = structlog.get_logger("palisade.access")


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                rid = candidate if _VALID_RID.match(candidate) else None
                break
        rid = rid or secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = 500
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # plus what a handler left for the response (RateLimit headers before a stream starts)
                extra = scope["state"].get("response_headers") or ()
                message["headers"] = [*message.get("headers", ()), rid_header, *extra]
            await send(message)

        if tracing.enabled():  # off: not one extra call on the hot path
            with _request_span(scope, rid) as sp:
                await _serve(app, scope, receive, send_wrapper, rid, start, lambda: status)
                sp.set_attribute("http.route", scope.get("path_template") or "unmatched")
                sp.set_attribute("http.response.status_code", status)
            return
        await _serve(app, scope, receive, send_wrapper, rid, start, lambda: status)

    return middleware


async def _serve(app: ASGIApp, scope: Scope, receive: Receive, send: Send, rid: str, start: float,
                 status_of: object) -> None:
    try:
        await app(scope, receive, send)
    finally:
        status = status_of()  # type: ignore[operator]
        elapsed = time.perf_counter() - start
        route = scope.get("path_template") or "unmatched"
        method = scope["method"]
        # bounded labels (route templates and statuses, not paths): each child looked up once (gateway.metrics.child)
        child(REQUESTS, method, route, str(status)).inc()
        child(LATENCY, method, route).observe(elapsed)
        if status >= 400 or route not in ("/healthz", "/metrics", "/readyz"):
            _log.info(
                "request", request_id=rid, method=method, route=route, status=status,
                ms=round(elapsed * 1000, 2), principal=scope.get("state", {}).get("principal_id"),
            )


def _request_span(scope: Scope, rid: str):  # noqa: ANN202
    """The request's root span, continuing the caller's W3C traceparent; the access log line is written inside
    it, so it carries the trace id."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
               if k in (b"traceparent", b"tracestate")}
    return tracing.span("http.request", context=tracing.extract(headers), kind="server", request_id=rid,
                        **{"http.request.method": scope["method"], "url.path": scope["path"]})
