"""Fake upstream inference servers speaking TGI and the OpenAI API over real HTTP (raw ASGI + uvicorn).

One app serves both protocols: TGI (``POST /``, ``/generate``, ``/generate_stream``, ``/v1/chat/completions``,
``GET /health``, ``/info``) and OpenAI (``/v1/chat/completions``, ``/v1/completions``, ``GET /v1/models``);
``protocol`` only decides which base URL a test gets (server root for TGI, ``…/v1`` for OpenAI).

Modes (``FakeServer.mode`` may be changed while running):
- ``ok``: a deterministic echo answer (``"Echo: <prompt or last user message>"``), at once;
- ``slow``: like ``ok`` with ``token_delay`` seconds between tokens (and before a whole answer);
- ``die_mid_stream``: two tokens, then the connection is dropped (non-stream: a truncated body);
- ``hang``: accepts and never answers (until the client goes away or the server stops);
- ``garbage``: 200 with a non-JSON body (streams: ``data:`` lines that are not JSON);
- ``error500``: 500 with an error body; ``/health`` answers 500 too;
- ``down``: nothing listens (a bound, non-listening port: connection refused).

``ok`` answers a prompt longer than ``max_input_chars`` like real servers do (TGI 422, vLLM 400).

Gate: ``srv.hold()`` makes every generation request wait (after its body is read, before any answer byte) until
``srv.release()``; ``stats.held`` counts those waiting, so a test can put N requests in flight at once and know it.
``stats.generations`` counts generation calls (POSTs), not health probes: "the upstream was never called".

Usage::

    with fake_upstream("ok", "openai") as base_url: ...         # just the URL
    with serve_fake("slow", "tgi") as srv: srv.url, srv.stats   # the handle (mode, counters)

Standalone (benchmarks): ``python -m tests.support.fake_upstreams --port 18080 [--mode ok]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MODES = ("ok", "slow", "die_mid_stream", "hang", "garbage", "error500", "down")
PROTOCOLS = ("tgi", "openai")
MODEL_ID = "fake-model"

_TOKEN_RE = re.compile(r"\S+\s*")


class _DropConnection(Exception):
    """Raised after a partial response: uvicorn then aborts the connection."""


@dataclass
class Stats:
    requests: int = 0
    completed: int = 0
    disconnects: int = 0
    active: int = 0
    max_active: int = 0
    #: generation requests received (POSTs; health probes and /info are not counted)
    generations: int = 0
    #: generation requests waiting at the gate now
    held: int = 0
    paths: dict[str, int] = field(default_factory=dict)
    last_body: dict[str, Any] | None = None
    #: answers completed per prompt (the last user message, or the prompt): "was this line run twice?"
    answered: dict[str, int] = field(default_factory=dict)
    #: per generation request, the adapter asked for: TGI ``parameters.adapter_id`` on /generate(_stream), the
    #: ``model`` field on the OpenAI-compatible routes (how vLLM/SGLang and TGI's Messages API name an adapter)
    adapters: list[str | None] = field(default_factory=list)
    #: the W3C trace context of the last request (what a traced gateway passes upstream)
    last_traceparent: str | None = None
    #: the Cookie header of each request that had one (every answer sets a cookie: a client must not send it back)
    cookies: list[str] = field(default_factory=list)


class FakeUpstreamApp:
    """Raw ASGI app; fast on the ``ok`` path (no framework)."""

    def __init__(self, mode: str = "ok", *, token_delay: float = 0.05, max_input_chars: int = 4000) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.token_delay = token_delay
        self.max_input_chars = max_input_chars
        self.stats = Stats()
        self.stopping = False
        #: while True, generation requests wait before answering (see ``FakeServer.hold``)
        self.gated = False

    # ---------------------------------------------------------------- ASGI entry
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # pragma: no cover - lifespan is off
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        st = self.stats
        path = scope["path"]
        st.requests += 1
        st.paths[path] = st.paths.get(path, 0) + 1
        for name, value in scope["headers"]:
            if name == b"traceparent":
                st.last_traceparent = value.decode("latin-1")
            elif name == b"cookie":
                st.cookies.append(value.decode("latin-1"))
        st.active += 1
        st.max_active = max(st.max_active, st.active)
        try:
            body = await _read_body(receive)
            watch = asyncio.ensure_future(receive())  # resolves with http.disconnect when the client leaves
            try:
                await self._dispatch(scope["method"], path, body, send, watch)
                st.completed += 1
            finally:
                if watch.done():
                    st.disconnects += 1
                else:
                    watch.cancel()
        finally:
            st.active -= 1

    async def _dispatch(self, method: str, path: str, raw: bytes, send: Any, watch: asyncio.Future) -> None:
        mode = self.mode
        if mode == "hang":
            while not watch.done() and not self.stopping:
                await asyncio.sleep(0.02)
            return
        if method == "GET":
            if path in ("/health", "/v1/health"):
                if mode == "error500":
                    return await _send_json(send, 500, {"error": "unhealthy"})
                return await _send(send, 200, b"", b"text/plain")
            if path == "/info":
                return await _send_json(
                    send,
                    200,
                    {
                        "model_id": MODEL_ID,
                        "max_input_tokens": 1024,
                        "max_total_tokens": 2048,
                        "version": "fake",
                    },
                )
            if path == "/v1/models":
                if mode == "error500":
                    return await _send_json(send, 500, {"error": {"message": "boom", "type": "server_error"}})
                return await _send_json(
                    send,
                    200,
                    {
                        "object": "list",
                        "data": [
                            {
                                "id": MODEL_ID,
                                "object": "model",
                                "created": 0,
                                "owned_by": "fake",
                                "max_model_len": 2048,
                            }
                        ],
                    },
                )
            return await _send_json(send, 404, {"error": "not found"})
        if method != "POST":
            return await _send_json(send, 405, {"error": "method not allowed"})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return await _send_json(send, 400, {"error": "bad json"})
        self.stats.last_body = body
        self.stats.generations += 1
        params = body.get("parameters") if isinstance(body, dict) else None
        self.stats.adapters.append(
            body.get("model") if path.startswith("/v1/") else (params or {}).get("adapter_id")
        )
        if self.gated:
            self.stats.held += 1
            try:
                while self.gated and not watch.done() and not self.stopping:
                    await asyncio.sleep(0.005)
            finally:
                self.stats.held -= 1
            if watch.done():
                return
        openai_route = path.startswith("/v1/")
        if mode == "error500":
            if openai_route:
                return await _send_json(
                    send,
                    500,
                    {
                        "object": "error",
                        "message": "internal error",
                        "type": "InternalServerError",
                        "code": 500,
                    },
                )
            return await _send_json(send, 500, {"error": "internal error", "error_type": "generation"})
        if path in ("/", "/generate", "/generate_stream"):
            stream = path == "/generate_stream" or (path == "/" and bool(body.get("stream")))
            return await self._tgi_generate(body, stream, send, watch)
        if path == "/v1/chat/completions":
            return await self._openai(body, chat=True, send=send, watch=watch)
        if path == "/v1/completions":
            return await self._openai(body, chat=False, send=send, watch=watch)
        return await _send_json(send, 404, {"error": "not found"})

    # ---------------------------------------------------------------- answers
    def _answer(self, text: str, max_tokens: int) -> tuple[list[str], bool]:
        tokens = _TOKEN_RE.findall(f"Echo: {text}")
        truncated = len(tokens) > max_tokens
        return tokens[:max_tokens], truncated

    async def _tgi_generate(self, body: dict, stream: bool, send: Any, watch: asyncio.Future) -> None:
        prompt = str(body.get("inputs", ""))
        params = body.get("parameters") or {}
        max_new = int(params.get("max_new_tokens") or 20)
        if len(prompt) > self.max_input_chars:
            return await _send_json(
                send,
                422,
                {
                    "error": f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. "
                    f"Given: {len(prompt) // 4} `inputs` tokens and {max_new} `max_new_tokens`",
                    "error_type": "validation",
                },
            )
        tokens, truncated = self._answer(prompt, max_new)
        reason = "length" if truncated else "eos_token"
        prompt_tokens = str(len(prompt.split())).encode()
        if self.mode == "garbage":
            if stream:
                return await _send(send, 200, b"data:<html>oops</html>\n\n", b"text/event-stream")
            return await _send(send, 200, b"<html>502 Bad Gateway</html>", b"text/html")
        if not stream:
            if self.mode == "die_mid_stream":
                return await _send_truncated(send, b'{"generated_text": "Echo')
            await self._pause(len(tokens))
            details = {
                "finish_reason": reason,
                "generated_tokens": len(tokens),
                "seed": None,
                "prefill": [],
                "tokens": [
                    {"id": i, "text": t, "logprob": -0.5, "special": False} for i, t in enumerate(tokens)
                ],
            }
            out = {"generated_text": "".join(tokens), "details": details}
            return await _send_json(
                send,
                200,
                [out] if body.get("_compat_list") else out,
                extra=[(b"x-prompt-tokens", prompt_tokens)],
            )
        await _start(send, 200, b"text/event-stream", extra=[(b"x-prompt-tokens", prompt_tokens)])
        for i, tok in enumerate(tokens):
            if self.mode == "die_mid_stream" and i == 2:
                raise _DropConnection
            if await self._stream_pause(i, watch):
                return
            last = i == len(tokens) - 1
            event = {
                "index": i + 1,
                "token": {"id": i, "text": tok, "logprob": -0.5, "special": False},
                "top_tokens": None,
                "generated_text": "".join(tokens) if last else None,
                "details": {"finish_reason": reason, "generated_tokens": len(tokens), "seed": None}
                if last
                else None,
            }
            await send(
                {"type": "http.response.body", "body": b"data:" + _dumps(event) + b"\n\n", "more_body": True}
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _openai(self, body: dict, *, chat: bool, send: Any, watch: asyncio.Future) -> None:
        if chat:
            messages = body.get("messages") or []
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            text = str(users[-1].get("content", "")) if users else ""
            prompt_chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
            prompt_tokens = sum(
                len(str(m.get("content", "")).split()) + 4 for m in messages if isinstance(m, dict)
            )
        else:
            text = str(body.get("prompt", ""))
            prompt_chars = len(text)
            prompt_tokens = len(text.split())
        max_tokens = int(body.get("max_tokens") or 16)
        if prompt_chars > self.max_input_chars:
            return await _send_json(
                send,
                400,
                {
                    "object": "error",
                    "type": "BadRequestError",
                    "code": 400,
                    "param": None,
                    "message": f"This model's maximum context length is 2048 tokens. However, you requested "
                    f"{prompt_chars // 4 + max_tokens} tokens. Please reduce the length of the messages.",
                },
            )
        if self.mode == "garbage":
            if body.get("stream"):
                return await _send(send, 200, b"data: {not json\n\n", b"text/event-stream")
            return await _send(send, 200, b"<html>oops</html>", b"text/html")
        tokens, truncated = self._answer(text, max_tokens)
        reason = "length" if truncated else "stop"
        answered = self.stats.answered
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        model = body.get("model") or MODEL_ID
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            if self.mode == "die_mid_stream":
                return await _send_truncated(send, b'{"id": "cmpl-1", "choices": [')
            await self._pause(len(tokens))
            answered[text] = answered.get(text, 0) + 1
            answer = "".join(tokens)
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": answer}
            else:
                choice["text"] = answer
            return await _send_json(
                send,
                200,
                {
                    "id": "cmpl-fake",
                    "object": obj,
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fake",
                    "choices": [choice],
                    "usage": usage,
                },
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await _start(send, 200, b"text/event-stream")
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"
        for i, tok in enumerate(tokens):
            if self.mode == "die_mid_stream" and i == 2:
                raise _DropConnection
            if await self._stream_pause(i, watch):
                return
            last = i == len(tokens) - 1
            c: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason if last else None}
            if chat:
                c["delta"] = {"role": "assistant", "content": tok}
            else:
                c["text"] = tok
            chunk = {
                "id": "cmpl-fake",
                "object": chunk_obj,
                "created": created,
                "model": model,
                "system_fingerprint": "fake",
                "choices": [c],
            }
            if include_usage:
                chunk["usage"] = None
            await send(
                {"type": "http.response.body", "body": b"data: " + _dumps(chunk) + b"\n\n", "more_body": True}
            )
        tail = b""
        if include_usage:
            tail += (
                b"data: "
                + _dumps(
                    {
                        "id": "cmpl-fake",
                        "object": chunk_obj,
                        "created": created,
                        "model": model,
                        "system_fingerprint": "fake",
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        tail += b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _pause(self, n_tokens: int) -> None:
        if self.mode == "slow":
            await asyncio.sleep(self.token_delay * max(1, n_tokens))

    async def _stream_pause(self, i: int, watch: asyncio.Future) -> bool:
        """Waits between tokens in slow mode (the first one comes at once); True when the client went away."""
        if self.mode == "slow" and i > 0:
            end = time.monotonic() + self.token_delay
            while time.monotonic() < end:
                if watch.done():
                    return True
                await asyncio.sleep(min(0.01, self.token_delay))
        return watch.done()


# -------------------------------------------------------------------- helpers
def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


#: what a sticky load balancer or a session-minded server in front of a model might set on every answer
_SET_COOKIE = (b"set-cookie", b"upstream_session=caller-specific; Path=/")


async def _start(send: Any, status: int, content_type: bytes, extra: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache"), _SET_COOKIE, *(extra or [])],
        }
    )


async def _send(send: Any, status: int, body: bytes, content_type: bytes, extra: list | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), _SET_COOKIE,
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_json(send: Any, status: int, obj: Any, extra: list | None = None) -> None:
    await _send(send, status, _dumps(obj), b"application/json", extra)


async def _send_truncated(send: Any, partial: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
        }
    )
    await send({"type": "http.response.body", "body": partial, "more_body": True})
    raise _DropConnection


# -------------------------------------------------------------------- serving
class FakeServer:
    """A running fake upstream (or, in ``down`` mode, a port where nothing listens)."""

    def __init__(
        self,
        mode: str = "ok",
        protocol: str = "openai",
        *,
        token_delay: float = 0.05,
        max_input_chars: int = 4000,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        self.protocol = protocol
        self.app = FakeUpstreamApp(
            "ok" if mode == "down" else mode, token_delay=token_delay, max_input_chars=max_input_chars
        )
        self.down = mode == "down"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root_url + ("/v1" if self.protocol == "openai" else "")

    @property
    def stats(self) -> Stats:
        return self.app.stats

    @property
    def mode(self) -> str:
        return "down" if self.down else self.app.mode

    def set_mode(self, mode: str) -> None:
        if mode == "down" or self.down:
            raise ValueError("down is fixed at start")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.app.mode = mode

    def hold(self) -> None:
        """Generation requests from now on wait at the gate (counted in ``stats.held``) until ``release``."""
        self.app.gated = True

    def release(self) -> None:
        self.app.gated = False

    def wait_for(self, condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
        """Poll ``condition(stats)`` until true (an awaited condition instead of a fixed sleep)."""
        deadline = time.monotonic() + timeout
        while not condition(self.stats):
            if time.monotonic() > deadline:
                raise AssertionError(f"fake upstream: {what} not reached in {timeout}s ({self.stats})")
            time.sleep(0.01)

    def start(self) -> FakeServer:
        if self.down:  # bound but not listening: connections are refused
            return self
        import uvicorn

        self._sock.listen(1024)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="critical",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"fake-upstream-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.app.stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_fake(mode: str = "ok", protocol: str = "openai", **kw: Any) -> Iterator[FakeServer]:
    server = FakeServer(mode, protocol, **kw)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def fake_upstream(mode: str = "ok", protocol: str = "openai", **kw: Any) -> Iterator[str]:
    """Base URL of a running fake upstream (TGI: server root; OpenAI: ``…/v1``); stopped on exit."""
    with serve_fake(mode, protocol, **kw) as server:
        yield server.url


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual / benchmark use
    import uvicorn

    p = argparse.ArgumentParser(description="fake TGI / OpenAI upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--mode", default="ok", choices=[m for m in MODES if m != "down"])
    p.add_argument("--token-delay", type=float, default=0.05)
    a = p.parse_args(argv)
    uvicorn.run(
        FakeUpstreamApp(a.mode, token_delay=a.token_delay),
        host=a.host,
        port=a.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":  # pragma: no cover
    main()
