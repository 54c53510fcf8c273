"""OpenAI-compatible upstream (vLLM, SGLang) over aiohttp: ``/chat/completions``, ``/completions``, SSE.

One pooled :class:`aiohttp.ClientSession` per backend (and event loop), created lazily inside the running
loop. Timeouts: connect (``connect_timeout_s``), first byte / any socket read (``read_timeout_s``), and
between stream events (``stream_idle_timeout_s``). Bodies are encoded and decoded with msgspec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from gateway.inference.base import (
    Backend,
    BackendConnectError,
    BackendError,
    BackendInputError,
    BackendTimeout,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
    Usage,
)

log = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 500
# below the idle timeout of common upstream servers (uvicorn, hence vLLM/SGLang: 5 s): a pooled connection is
# never reused just as the server closes it (a POST is not retried on such a race)
_KEEPALIVE_S = 4.0
_DNS_TTL_S = 30
_DRAIN_S = 0.1  # after ``[DONE]``: how long to wait for the end of the response to keep the connection
_DRAIN_MAX_BYTES = 64 * 1024

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_POST_HEADERS = {"Content-Type": "application/json"}


def _finish(reason: Any) -> FinishReason:
    return "length" if reason == "length" else "stop"


class _SSEDecoder:
    """Incremental ``text/event-stream`` decoder: bytes in any chunking → the ``data`` of each complete event.

    Lines end with LF, CRLF or CR (a CRLF split across two reads counts once); an event's ``data:`` lines are
    joined with LF and the event is dispatched at the blank line that ends it; other fields and comments are
    ignored. A line is only used once its terminator has arrived."""

    __slots__ = ("_buf", "_data", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._cr = False  # the previous chunk ended with CR: a leading LF is its CRLF's second half

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._cr:
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._buf:
            chunk = self._buf + chunk
        lines = chunk.split(b"\n")
        self._buf = lines.pop()  # the unterminated rest
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
        return events

    def finish(self) -> list[bytes]:
        """At the end of the stream: an event whose blank line never came still counts (lenient)."""
        if not self._data:
            return []
        data, self._data = self._data, []
        return [b"\n".join(data)]


class OpenAIBackend(Backend):
    """One OpenAI-compatible server; ``url`` is its API base (ending in ``/v1``)."""

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        upstream_model: str | None = None,
        api_key: str | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 60.0,
        stream_idle_timeout_s: float = 30.0,
        health_timeout_s: float | None = None,
        max_connections: int = 256,
        context_length: int | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name or self.url
        self.upstream_model = upstream_model
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.health_timeout_s = health_timeout_s or max(1.0, connect_timeout_s)
        self.context_length = context_length
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers
        self._max_connections = max(1, max_connections)
        # connect bound + time-to-next-byte bound; no total bound (a long stream is fine while it moves)
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout_s,  # includes waiting for a free pooled connection
            sock_connect=connect_timeout_s,
            sock_read=max(read_timeout_s, stream_idle_timeout_s),
        )
        self._client: aiohttp.ClientSession | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------- plumbing
    @property
    def client(self) -> aiohttp.ClientSession:
        """The pooled session of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        session = self._client
        if session is None or session.closed or self._client_loop is not loop:
            session = self._client = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    limit_per_host=0,
                    keepalive_timeout=_KEEPALIVE_S,
                    ttl_dns_cache=_DNS_TTL_S,
                ),  # aiohttp sets TCP_NODELAY on its connections
                trust_env=False,  # upstreams are addressed directly, never through *_PROXY variables
                raise_for_status=False,
            )
            self._client_loop = loop
        return session

    async def close(self) -> None:
        session, self._client = self._client, None
        loop, self._client_loop = self._client_loop, None
        if session is None or session.closed:
            return
        if loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await session.close()
        # else: made in another event loop, now gone with its sockets; it cannot be awaited from this one

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self.client.post(
            self.url + path, data=_encode(body), headers=_POST_HEADERS, allow_redirects=False
        )

    def _body(self, req: GenerationRequest, *, stream: bool) -> tuple[str, dict[str, Any]]:
        p = req.params
        model = req.upstream_model or self.upstream_model
        body: dict[str, Any] = {"max_tokens": p.max_tokens, "temperature": p.temperature, "stream": stream}
        if model:
            body["model"] = model
        if p.top_p < 1:
            body["top_p"] = p.top_p
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if stream:
            body["stream_options"] = {"include_usage": True}
        if req.messages is not None:
            body["messages"] = req.messages
            return "/chat/completions", body
        body["prompt"] = req.prompt
        return "/completions", body

    def _error_for_status(self, status: int, raw: bytes) -> Exception:
        message = _upstream_message(raw)
        if status in (400, 413, 422):
            return BackendInputError(message or "the upstream rejected the input")
        # overloaded / not ready: nothing was produced, another endpoint may serve it
        if status in (429, 503):
            return BackendConnectError(
                f"OpenAI endpoint {self.name} is overloaded or not ready (HTTP {status})"
            )
        if status in (502, 504):
            return BackendError(f"OpenAI endpoint {self.name} failed (HTTP {status})")
        return BackendError(f"OpenAI endpoint {self.name} failed (HTTP {status}): {message[:200]}")

    def _map(self, exc: BaseException, *, started: bool) -> Exception:
        if isinstance(exc, TimeoutError):  # asyncio.timeout, aiohttp.ServerTimeoutError (connect / sock_read)
            return BackendTimeout(f"OpenAI endpoint {self.name} timed out")
        if isinstance(exc, aiohttp.ClientConnectorError) and not started:  # refused, unreachable, DNS
            return BackendConnectError(f"cannot connect to OpenAI endpoint {self.name}")
        if isinstance(exc, aiohttp.ClientError | OSError):
            return BackendError(f"OpenAI endpoint {self.name}: connection failed ({type(exc).__name__})")
        log.exception("unexpected error from OpenAI endpoint %s", self.name)
        return BackendError(f"OpenAI endpoint {self.name} failed")

    # ------------------------------------------------------------- requests
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        path, body = self._body(request, stream=False)
        try:
            async with asyncio.timeout(self.read_timeout_s + self.connect_timeout_s):
                async with self._post(path, body) as resp:
                    status = resp.status
                    raw = await resp.read()
        except Exception as exc:
            raise self._map(exc, started=False) from exc
        if status != 200:
            raise self._error_for_status(status, raw)
        try:
            payload = _decode(raw)
            choice = payload["choices"][0]
            if request.messages is not None:
                text = choice["message"].get("content") or ""
            else:
                text = choice["text"]
            if not isinstance(text, str):
                raise TypeError("text")
            reason = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(f"upstream answered garbage (OpenAI endpoint {self.name})") from None
        usage = _usage(payload.get("usage")) or Usage(
            self.count_prompt_tokens(request), max(1, len(text) // 4)
        )
        return GenerationResult(text=text, finish_reason=_finish(reason), usage=usage)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        path, body = self._body(request, stream=True)
        chat = request.messages is not None
        finish: FinishReason | None = None
        usage: Usage | None = None
        completion = 0
        started = False
        resp: aiohttp.ClientResponse | None = None
        clean = False  # the response was read to its end (or to [DONE]): its connection may be pooled again
        try:
            try:
                async with asyncio.timeout(self.read_timeout_s + self.connect_timeout_s):
                    resp = await self._post(path, body)
                    if resp.status != 200:
                        raw = await resp.read()
                        clean = True
                        raise self._error_for_status(resp.status, raw)
            except (BackendError, BackendInputError):
                raise
            except Exception as exc:
                raise self._map(exc, started=False) from exc
            content = resp.content
            decoder = _SSEDecoder()
            done = False
            while not done:
                try:
                    async with asyncio.timeout(
                        self.stream_idle_timeout_s if started else self.read_timeout_s
                    ):
                        chunk = await content.readany()
                except Exception as exc:
                    raise self._map(exc, started=True) from exc
                if chunk:
                    events = decoder.feed(chunk)
                else:  # end of the response
                    events = decoder.finish()
                    clean = done = True
                for data in events:
                    if data.strip() == b"[DONE]":
                        clean = done = True
                        break
                    started = True
                    text, reason, ev_usage = self._parse_chunk(data, chat)
                    if ev_usage is not None:
                        usage = ev_usage
                    if reason is not None:
                        finish = _finish(reason)
                    if text:
                        completion += 1
                        yield StreamDelta(text=text)
            if finish is None:
                raise BackendError(f"OpenAI endpoint {self.name} ended the stream without finishing")
            if usage is None:
                usage = Usage(prompt_tokens=self.count_prompt_tokens(request), completion_tokens=completion)
            yield StreamDelta(finish_reason=finish, usage=usage)
            # the consumer asked for more: wait (briefly) for the end of the response, so that its connection
            # goes back to the pool instead of being closed
            if not content.at_eof():
                with contextlib.suppress(Exception):
                    drained = 0
                    async with asyncio.timeout(_DRAIN_S):
                        while drained <= _DRAIN_MAX_BYTES and (extra := await content.readany()):
                            drained += len(extra)
        finally:
            if resp is not None:
                if clean:
                    resp.release()  # pooled again when read to its end, else its connection is closed
                else:
                    resp.close()  # an unfinished response closes its connection: the upstream sees us go

    def _parse_chunk(self, data: bytes, chat: bool) -> tuple[str, Any, Usage | None]:
        try:
            obj = _decode(data)
        except ValueError:
            raise BackendError(
                f"upstream answered garbage (OpenAI endpoint {self.name}, bad stream event)"
            ) from None
        if not isinstance(obj, dict):
            raise BackendError(f"upstream answered garbage (OpenAI endpoint {self.name}, bad stream event)")
        if "error" in obj and "choices" not in obj:
            raise BackendError(f"OpenAI endpoint {self.name} failed mid-stream: {_upstream_message(data)}")
        choices = obj.get("choices")
        if not isinstance(choices, list):
            raise BackendError(f"upstream answered garbage (OpenAI endpoint {self.name}, no choices)")
        usage = _usage(obj.get("usage"))
        if not choices:
            return "", None, usage
        choice = choices[0]
        if not isinstance(choice, dict):
            raise BackendError(f"upstream answered garbage (OpenAI endpoint {self.name}, bad choice)")
        if chat:
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise BackendError(f"upstream answered garbage (OpenAI endpoint {self.name}, bad text)")
        return text or "", choice.get("finish_reason"), usage

    async def health(self) -> bool:
        try:
            async with asyncio.timeout(self.health_timeout_s):
                if await self._get_status(self.url + "/models") == 200:
                    return True
                root = self.url.removesuffix("/v1")
                if root != self.url:
                    return await self._get_status(root + "/health") == 200
                return False
        except Exception:
            return False

    async def _get_status(self, url: str) -> int:
        async with self.client.get(url, allow_redirects=False) as resp:
            await resp.read()  # read to the end: the connection goes back to the pool
            return resp.status


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Usage(
            prompt_tokens=int(raw.get("prompt_tokens") or 0),
            completion_tokens=int(raw.get("completion_tokens") or 0),
        )
    except (TypeError, ValueError):
        return None


def _upstream_message(raw: bytes) -> str:
    """The upstream's error message (OpenAI ``{"error": {"message"}}``, vLLM ``{"message"}``), trimmed."""
    try:
        obj = _decode(raw)
    except ValueError:
        return ""
    if not isinstance(obj, dict):
        return ""
    err = obj.get("error")
    if isinstance(err, dict):
        msg = err.get("message")
    elif isinstance(err, str):
        msg = err
    else:
        msg = obj.get("message")
    return str(msg)[:_MAX_ERROR_CHARS] if msg else ""
