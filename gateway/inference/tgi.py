"""Text Generation Inference (TGI) backend over the ``text_generation`` client (0.7).

Prompt requests go to ``/generate`` and ``/generate_stream``; chat requests to TGI's Messages API
(``/v1/chat/completions``). The 0.7 ``AsyncClient`` cannot send ``adapter_id`` or chat ``stop``, uses one
*total* timeout for a whole stream, and its chat-stream reader fails on ``data: [DONE]`` and on deltas without
``tool_calls`` (what current TGI sends). :class:`_TGIClient` therefore extends it: same configuration, same
wire models (``Request``/``Parameters``/``ChatRequest``/``Response``/``StreamResponse``) and error parsing,
plus those fields, split connect/read timeouts, a tolerant SSE reader and the ``x-prompt-tokens`` header. The
pooled session, timeouts, transport-error mapping and OpenAI shapes come from ``gateway.inference.upstream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pydantic
from text_generation import AsyncClient
from text_generation import errors as tgi_errors
from text_generation.types import ChatRequest, Message, Parameters, Request, Response, StreamResponse

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
from gateway.inference.upstream import (
    MAX_ERROR_CHARS,
    PooledSession,
    Timeouts,
    chat_answer,
    chat_chunk,
    error_message,
    finish_reason,
    next_within,
    transport_error,
)

log = logging.getLogger(__name__)

def _map_tgi_error(exc: Exception, name: str) -> Exception:
    """A ``text_generation`` error → a backend error."""
    msg = str(exc)[:MAX_ERROR_CHARS]
    if isinstance(exc, tgi_errors.ValidationError | tgi_errors.BadRequestError):
        return BackendInputError(msg)
    if isinstance(
        exc, tgi_errors.OverloadedError | tgi_errors.RateLimitExceededError | tgi_errors.ShardNotReadyError
    ):
        return BackendConnectError(f"TGI endpoint {name} is overloaded or not ready")  # nothing produced
    if isinstance(exc, tgi_errors.ShardTimeoutError):
        return BackendTimeout(f"TGI endpoint {name} timed out")
    return BackendError(f"TGI endpoint {name} failed: {msg}")


class _TGIClient(AsyncClient):
    """``text_generation.AsyncClient`` plus what 0.7 lacks (see the module docstring)."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None, timeouts: Timeouts) -> None:
        super().__init__(base_url.rstrip("/"), headers=headers)
        # one pooled session per client and event loop (0.7 opens a new connection for every request)
        self.http = PooledSession(headers=dict(self.headers or {}), timeouts=timeouts)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[aiohttp.ClientSession]:
        yield self.http.get()

    async def aclose(self) -> None:
        await self.http.close()

    @staticmethod
    def _raise_for(status: int, payload: Any) -> None:
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            raise tgi_errors.parse_error(status, payload)  # TGI's own {"error", "error_type"}
        message = error_message(payload)  # the Messages API of some versions answers OpenAI's shape
        if not message:
            raise BackendError(f"upstream answered garbage (HTTP {status})")
        if status in (400, 413, 422):
            raise BackendInputError(message[:MAX_ERROR_CHARS])
        raise BackendError(f"TGI endpoint failed (HTTP {status}): {message[:200]}")

    async def generate_ex(self, body: dict[str, Any]) -> tuple[Response, int | None]:
        async with self.session() as session, session.post(f"{self.base_url}/generate", json=body) as resp:
            payload = await _json_body(resp)
            if resp.status != 200:
                self._raise_for(resp.status, payload)
            if isinstance(payload, list) and payload:
                payload = payload[0]
            try:
                return Response(**payload), _int_header(resp, "x-prompt-tokens")
            except (pydantic.ValidationError, TypeError) as exc:
                raise BackendError("upstream answered garbage (unexpected generate response)") from exc

    async def sse(
        self, path: str, body: dict[str, Any], prompt_tokens: list[int | None]
    ) -> AsyncIterator[dict]:
        """POST and yield each ``data:`` JSON object of the SSE answer (``[DONE]`` ends it)."""
        async with self.session() as session, session.post(f"{self.base_url}{path}", json=body) as resp:
            if resp.status != 200:
                self._raise_for(resp.status, await _json_body(resp))
            prompt_tokens[0] = _int_header(resp, "x-prompt-tokens")
            async for raw in resp.content:
                line = raw.strip()
                if not line or not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    obj = json.loads(data)
                except ValueError as exc:
                    raise BackendError("upstream answered garbage (bad stream event)") from exc
                if not isinstance(obj, dict):
                    raise BackendError("upstream answered garbage (bad stream event)")
                if "error" in obj and "token" not in obj and "choices" not in obj:
                    raise tgi_errors.parse_error(resp.status, obj)
                yield obj


async def _json_body(resp: aiohttp.ClientResponse) -> Any:
    raw = await resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        if resp.status == 200:
            raise BackendError("upstream answered garbage (not JSON)") from None
        return None


def _int_header(resp: aiohttp.ClientResponse, name: str) -> int | None:
    try:
        return int(resp.headers[name])
    except (KeyError, ValueError):
        return None


class TGIBackend(Backend):
    """One TGI server."""

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 60.0,
        stream_idle_timeout_s: float = 30.0,
        health_timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
        context_length: int | None = None,
        adapter_id: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name or self.url
        self.what = f"TGI endpoint {self.name}"
        #: the LoRA adapter this alias's version is served with (TGI multi-LoRA); it wins over a caller's
        self.adapter_id = adapter_id
        self.timeouts = Timeouts(connect_timeout_s, read_timeout_s, stream_idle_timeout_s, health_timeout_s)
        self.context_length = context_length
        self._client = _TGIClient(self.url, headers=headers, timeouts=self.timeouts)
        self.http = self._client.http

    # ------------------------------------------------------------- requests
    def _generate_body(self, req: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        p = req.params
        sample = p.temperature > 0
        try:
            params = Parameters(
                details=True,
                do_sample=sample,
                max_new_tokens=p.max_tokens,
                temperature=p.temperature if sample and p.temperature != 1.0 else None,
                top_p=p.top_p if sample and 0 < p.top_p < 1 else None,
                seed=p.seed if sample else None,
                stop=list(p.stop),
            )
        except tgi_errors.ValidationError as exc:
            raise BackendInputError(f"invalid sampling parameters: {exc}") from None
        except pydantic.ValidationError:
            raise BackendInputError("invalid sampling parameters") from None
        body = Request(inputs=req.prompt or "", stream=stream, parameters=params).model_dump()
        if self.adapter_id:  # the alias's version names the adapter; a caller never does
            body["parameters"]["adapter_id"] = self.adapter_id
        return body

    def _chat_body(self, req: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        p = req.params
        try:
            messages = [
                Message(role=str(m.get("role", "user")), content=m.get("content")) for m in req.messages or []
            ]
        except pydantic.ValidationError as exc:
            raise BackendInputError("invalid chat messages") from exc
        body = ChatRequest(
            model=self.adapter_id or req.upstream_model or "tgi",  # TGI's Messages API picks the adapter by model
            messages=messages,
            max_tokens=p.max_tokens,
            stream=stream,
            seed=p.seed,
            temperature=p.temperature,
            top_p=p.top_p if 0 < p.top_p < 1 else None,
        ).model_dump(exclude_none=True)
        if p.stop:
            body["stop"] = list(p.stop)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        try:
            async with asyncio.timeout(self.timeouts.first_byte):
                if request.messages is not None:
                    return await self._chat_generate(request)
                resp, prompt_tokens = await self._client.generate_ex(
                    self._generate_body(request, stream=False)
                )
        except (BackendError, BackendInputError):
            raise
        except Exception as exc:
            raise self._map(exc, started=False) from exc
        usage = Usage(
            prompt_tokens=prompt_tokens or len(resp.details.prefill) or self.count_prompt_tokens(request),
            completion_tokens=resp.details.generated_tokens,
        )
        return GenerationResult(
            text=resp.generated_text, finish_reason=finish_reason(resp.details.finish_reason), usage=usage
        )

    async def _chat_generate(self, request: GenerationRequest) -> GenerationResult:
        async with (
            self._client.session() as session,
            session.post(
                f"{self._client.base_url}/v1/chat/completions", json=self._chat_body(request, stream=False)
            ) as resp,
        ):
            payload = await _json_body(resp)
            if resp.status != 200:
                self._client._raise_for(resp.status, payload)
        text, reason, usage = chat_answer(payload, self.what)
        usage = usage or Usage(self.count_prompt_tokens(request), max(1, len(text) // 4))
        return GenerationResult(text=text, finish_reason=finish_reason(reason), usage=usage)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        chat = request.messages is not None
        prompt_tokens: list[int | None] = [None]
        try:
            body = (
                self._chat_body(request, stream=True) if chat else self._generate_body(request, stream=True)
            )
            events = self._client.sse(
                "/v1/chat/completions" if chat else "/generate_stream", body, prompt_tokens
            )
        except (BackendError, BackendInputError):
            raise
        started = False
        completion = 0
        finish: FinishReason | None = None
        usage: Usage | None = None
        try:
            while True:
                try:
                    event = await next_within(events, self.timeouts.idle_s if started else self.timeouts.first_byte)
                except StopAsyncIteration:
                    break
                except (BackendError, BackendInputError):
                    raise
                except Exception as exc:
                    raise self._map(exc, started=started) from exc
                started = True
                if chat:
                    text, reason, ev_usage = chat_chunk(event, self.what)
                    if ev_usage is not None:
                        usage = ev_usage
                else:
                    text, reason, generated = _parse_generate_event(event)
                    if generated is not None:
                        usage = Usage(
                            prompt_tokens=prompt_tokens[0] or self.count_prompt_tokens(request),
                            completion_tokens=generated,
                        )
                if reason is not None:
                    finish = finish_reason(reason)
                if text:
                    completion += 1
                    yield StreamDelta(text=text)
        finally:
            await events.aclose()  # closes the HTTP response: TGI stops generating for a gone client
        if finish is None:
            raise BackendError(f"{self.what} ended the stream without finishing")
        if usage is None:
            usage = Usage(
                prompt_tokens=prompt_tokens[0] or self.count_prompt_tokens(request),
                completion_tokens=completion,
            )
        yield StreamDelta(finish_reason=finish, usage=usage)

    async def close(self) -> None:
        await self._client.aclose()

    async def health(self) -> bool:
        try:
            return await self.http.status_of(f"{self.url}/health") == 200
        except Exception:
            return False

    def _map(self, exc: BaseException, *, started: bool) -> Exception:
        if isinstance(
            exc,
            tgi_errors.ValidationError
            | tgi_errors.BadRequestError
            | tgi_errors.GenerationError
            | tgi_errors.OverloadedError
            | tgi_errors.IncompleteGenerationError
            | tgi_errors.UnknownError
            | tgi_errors.ShardNotReadyError
            | tgi_errors.ShardTimeoutError
            | tgi_errors.NotFoundError
            | tgi_errors.RateLimitExceededError,
        ):
            return _map_tgi_error(exc, self.name)
        if isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | TimeoutError | OSError):
            return transport_error(exc, self.what, started=started)
        if isinstance(exc, ValueError | KeyError | TypeError | pydantic.ValidationError):
            return BackendError(f"upstream answered garbage ({type(exc).__name__})")
        log.exception("unexpected error from TGI endpoint %s", self.name)
        return BackendError(f"TGI endpoint {self.name} failed")


def _parse_generate_event(event: dict) -> tuple[str, Any, int | None]:
    try:
        resp = StreamResponse(**event)
    except (pydantic.ValidationError, TypeError):
        raise BackendError("upstream answered garbage (unexpected stream event)") from None
    text = "" if resp.token.special else resp.token.text
    if resp.details is None:
        return text, None, None
    return text, resp.details.finish_reason, resp.details.generated_tokens
