"""OpenAI-compatible upstream (vLLM, SGLang) over httpx: ``/chat/completions``, ``/completions``, SSE."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx

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


def _finish(reason: Any) -> FinishReason:
    return "length" if reason == "length" else "stop"


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
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
        self._client: httpx.AsyncClient | None = None

    # ------------------------------------------------------------- plumbing
    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(
                headers=self._headers,
                timeout=httpx.Timeout(
                    connect=self.connect_timeout_s,
                    read=max(self.read_timeout_s, self.stream_idle_timeout_s),
                    write=self.read_timeout_s,
                    pool=self.connect_timeout_s,
                ),
                # TCP_NODELAY: httpcore writes headers and body apart; with Nagle + delayed ACK each request
                # would stall ~40 ms
                transport=httpx.AsyncHTTPTransport(
                    limits=self._limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
                ),
                follow_redirects=False,
                trust_env=False,  # upstreams are addressed directly, never through *_PROXY variables
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

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
        if status in (
            429,
            503,
        ):  # overloaded / not ready: nothing was produced, another endpoint may serve it
            return BackendConnectError(
                f"OpenAI endpoint {self.name} is overloaded or not ready (HTTP {status})"
            )
        if status in (502, 504):
            return BackendError(f"OpenAI endpoint {self.name} failed (HTTP {status})")
        return BackendError(f"OpenAI endpoint {self.name} failed (HTTP {status}): {message[:200]}")

    def _map(self, exc: BaseException, *, started: bool) -> Exception:
        if isinstance(exc, httpx.TimeoutException | asyncio.TimeoutError | TimeoutError):
            return BackendTimeout(f"OpenAI endpoint {self.name} timed out")
        if isinstance(exc, httpx.ConnectError) and not started:
            return BackendConnectError(f"cannot connect to OpenAI endpoint {self.name}")
        if isinstance(exc, httpx.HTTPError | OSError):
            return BackendError(f"OpenAI endpoint {self.name}: connection failed ({type(exc).__name__})")
        log.exception("unexpected error from OpenAI endpoint %s", self.name)
        return BackendError(f"OpenAI endpoint {self.name} failed")

    # ------------------------------------------------------------- requests
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        path, body = self._body(request, stream=False)
        try:
            async with asyncio.timeout(self.read_timeout_s + self.connect_timeout_s):
                resp = await self.client.post(self.url + path, json=body)
        except Exception as exc:
            raise self._map(exc, started=False) from exc
        if resp.status_code != 200:
            raise self._error_for_status(resp.status_code, resp.content)
        try:
            payload = resp.json()
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
        stack_resp: httpx.Response | None = None
        try:
            try:
                async with asyncio.timeout(self.read_timeout_s + self.connect_timeout_s):
                    stack_resp = await self.client.send(
                        self.client.build_request("POST", self.url + path, json=body), stream=True
                    )
                    if stack_resp.status_code != 200:
                        raw = await stack_resp.aread()
                        raise self._error_for_status(stack_resp.status_code, raw)
            except (BackendError, BackendInputError):
                raise
            except Exception as exc:
                raise self._map(exc, started=False) from exc
            lines = stack_resp.aiter_lines()
            done = False
            while not done:
                timeout = self.stream_idle_timeout_s if started else self.read_timeout_s
                try:
                    async with asyncio.timeout(timeout):
                        line = await anext(lines)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise self._map(exc, started=True) from exc
                line = line.strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
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
        finally:
            if stack_resp is not None:
                await (
                    stack_resp.aclose()
                )  # an unfinished response closes its connection: the upstream sees us go
        if finish is None:
            raise BackendError(f"OpenAI endpoint {self.name} ended the stream without finishing")
        if usage is None:
            usage = Usage(prompt_tokens=self.count_prompt_tokens(request), completion_tokens=completion)
        yield StreamDelta(finish_reason=finish, usage=usage)

    def _parse_chunk(self, data: str, chat: bool) -> tuple[str, Any, Usage | None]:
        try:
            obj = json.loads(data)
        except ValueError:
            raise BackendError(
                f"upstream answered garbage (OpenAI endpoint {self.name}, bad stream event)"
            ) from None
        if not isinstance(obj, dict):
            raise BackendError(f"upstream answered garbage (OpenAI endpoint {self.name}, bad stream event)")
        if "error" in obj and "choices" not in obj:
            raise BackendError(
                f"OpenAI endpoint {self.name} failed mid-stream: {_upstream_message(data.encode())}"
            )
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
                resp = await self.client.get(self.url + "/models")
                if resp.status_code == 200:
                    return True
                root = self.url.removesuffix("/v1")
                if root != self.url:
                    resp = await self.client.get(root + "/health")
                    return resp.status_code == 200
                return False
        except Exception:
            return False


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
        obj = json.loads(raw)
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
