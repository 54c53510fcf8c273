"""Server-sent events framing shared by the OpenAI and TGI dialects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import structlog
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ApiError
from gateway.inference.base import StreamDelta

_log = structlog.get_logger("palisade.sse")
_encode = msgspec.json.encode

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStream(Stream):
    """A Stream that keeps ``text/event-stream`` (Litestar lets the route's media type, JSON for routes that
    answer either way, override a returned Stream's own) and awaits ``on_close`` once the response is over,
    however it ended: also when its body was never iterated (the client left before it started)."""

    __slots__ = ("on_close",)

    def __init__(self, *args: Any, on_close: Callable[[], Awaitable[None]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["media_type"] = self.media_type
        response = super().to_asgi_response(*args, **kwargs)
        return response if self.on_close is None else _Closing(response, self.on_close)


class _Closing:
    """An ASGI response, then ``close`` (in a ``finally``)."""

    __slots__ = ("_response", "_close")

    def __init__(self, response: ASGIApp, close: Callable[[], Awaitable[None]]) -> None:
        self._response = response
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._response(scope, receive, send)
        finally:
            await self._close()


def event(payload: Any) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def sse_response(
    deltas: AsyncIterator[StreamDelta],
    render: Callable[[StreamDelta], list[Any]],
    *,
    request_id: str | None,
    done: bool = True,
    headers: dict[str, str] | None = None,
) -> Stream:
    """Stream ``render(delta)`` payloads as SSE; an error after the start becomes a final error event."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for delta in deltas:
                for payload in render(delta):
                    yield event(payload)
        except ApiError as exc:
            yield event(exc.body(request_id))
            return
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
        if done:
            yield b"data: [DONE]\n\n"

    return EventStream(body(), media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})},
                       on_close=deltas.aclose)  # type: ignore[attr-defined]
