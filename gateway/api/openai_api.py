"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models (thin: shapes in, shapes out)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from litestar import Controller, Response, get, post
from litestar.response import Stream

from gateway.api.deps import ContextDep, ServicesDep
from gateway.api.schemas import ChatCompletionRequest, CompletionRequest
from gateway.api.sse import sse_response
from gateway.authz.actions import Action
from gateway.inference.base import GenerationRequest, SamplingParams, StreamDelta

FINGERPRINT = "palisade"


def sampling(body: ChatCompletionRequest | CompletionRequest) -> tuple[SamplingParams, tuple[str, ...]]:
    """The request's sampling parameters, and the names of those it left to the model's defaults."""
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    omitted = tuple(
        name
        for name, value in (("temperature", body.temperature), ("top_p", body.top_p), ("max_tokens", max_tokens))
        if value is None
    )
    params = SamplingParams(
        max_tokens=max_tokens or 0,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stops(),
    )
    return params, omitted


def usage_dict(u: Any) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]

    @post(
        "/chat/completions", opt={"action": Action.MODEL_INVOKE}, operation_id="createChatCompletion", status_code=200
    )
    async def chat_completions(self, services: ServicesDep, ctx: ContextDep, data: ChatCompletionRequest) -> Any:
        data.unsupported()
        params, omitted = sampling(data)
        gen = GenerationRequest(ctx.request_id, params, messages=data.plain_messages(), omitted=omitted)
        return await run_chat(
            services,
            ctx,
            data.model,
            gen,
            stream=data.stream,
            include_usage=bool(data.stream_options and data.stream_options.include_usage),
        )

    @post("/completions", opt={"action": Action.MODEL_INVOKE}, operation_id="createCompletion", status_code=200)
    async def completions(self, services: ServicesDep, ctx: ContextDep, data: CompletionRequest) -> Any:
        data.unsupported()
        params, omitted = sampling(data)
        gen = GenerationRequest(ctx.request_id, params, prompt=data.text(), omitted=omitted)
        prepared = await services.inference.prepare(ctx, data.model, gen)
        cid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
        if data.stream:
            include_usage = bool(data.stream_options and data.stream_options.include_usage)
            deltas = await services.inference.open_stream(prepared)

            def render(d: StreamDelta) -> list[Any]:
                out: list[Any] = []
                if d.text or d.finish_reason:
                    out.append(
                        {
                            "id": cid,
                            "object": "text_completion",
                            "created": created,
                            "model": data.model,
                            "choices": [
                                {"index": 0, "text": d.text, "logprobs": None, "finish_reason": d.finish_reason}
                            ],
                        }
                    )
                if d.usage is not None and include_usage:
                    out.append(
                        {
                            "id": cid,
                            "object": "text_completion",
                            "created": created,
                            "model": data.model,
                            "choices": [],
                            "usage": usage_dict(d.usage),
                        }
                    )
                return out

            return sse_response(deltas, render, request_id=ctx.request_id, headers=prepared.headers)
        result = await services.inference.complete(prepared)
        return Response(
            {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": data.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}],
                "usage": usage_dict(result.usage),
            },
            headers=prepared.headers,
        )

    @get("/models", opt={"action": Action.MODEL_LIST}, operation_id="listModels")
    async def list_models(self, services: ServicesDep, ctx: ContextDep) -> dict[str, Any]:
        data = []
        for alias in services.models.aliases():
            attrs = services.models.attributes(alias)
            decision = await services.authz.decide(ctx, Action.MODEL_INVOKE, {"model": alias, **attrs})
            if decision.allowed:
                data.append(
                    {"id": alias, "object": "model", "created": 0, "owned_by": attrs.get("owner") or "palisade"}
                )
        return {"object": "list", "data": data}


async def run_chat(
    services: ServicesDep,
    ctx: ContextDep,
    model: str,
    gen: GenerationRequest,
    *,
    stream: bool,
    include_usage: bool,
    tgi_dialect: bool = False,
) -> Any:
    """Chat completion in OpenAI's shape; shared with TGI's /v1/chat/completions (same wire format)."""
    prepared = await services.inference.prepare(ctx, model, gen)
    cid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
    if stream:
        deltas = await services.inference.open_stream(prepared)
        first = True

        def render(d: StreamDelta) -> list[Any]:
            nonlocal first
            out: list[Any] = []
            if d.text or d.finish_reason or first:
                delta: dict[str, Any] = {"content": d.text}
                if first or tgi_dialect:  # TGI's client requires role and tool_calls on every delta
                    delta["role"] = "assistant"
                    first = False
                if tgi_dialect:
                    delta["tool_calls"] = None
                out.append(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": FINGERPRINT,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": d.finish_reason}],
                    }
                )
            if d.usage is not None and include_usage:
                out.append(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": FINGERPRINT,
                        "choices": [],
                        "usage": usage_dict(d.usage),
                    }
                )
            return out

        # TGI's client json-decodes every data line, so its dialect ends without OpenAI's [DONE] sentinel
        return sse_response(deltas, render, request_id=ctx.request_id, done=not tgi_dialect, headers=prepared.headers)
    result = await services.inference.complete(prepared)
    return Response(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": usage_dict(result.usage),
        },
        headers=prepared.headers,
    )


__all__ = ["OpenAIController", "Stream", "run_chat"]
