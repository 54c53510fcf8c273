"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import secrets
import time
from typing import Any

from litestar import Controller, Request, get, post
from litestar.response import Stream

from gateway.api.schemas import ChatCompletionRequest, CompletionRequest
from gateway.api.sse import sse_response
from gateway.authz.actions import Action
from gateway.authz.guards import principal_of
from gateway.inference.base import GenerationRequest, SamplingParams, StreamDelta
from gateway.middleware import request_id_of

FINGERPRINT = "palisade"


def sampling(body: ChatCompletionRequest | CompletionRequest, default_max: int) -> tuple[SamplingParams, bool]:
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    params = SamplingParams(
        max_tokens=max_tokens or default_max,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stops(),
    )
    return params, max_tokens is not None


def usage_dict(u: Any) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]

    @post("/chat/completions", opt={"action": Action.MODEL_INVOKE}, operation_id="createChatCompletion",
          status_code=200)
    async def chat_completions(self, request: Request, data: ChatCompletionRequest) -> Any:
        data.unsupported()
        services = request.app.state.services
        params, given = sampling(data, services.settings.default_max_tokens)
        gen = GenerationRequest(request_id_of(request.scope) or "", params, messages=data.plain_messages())
        return await run_chat(request, data.model, gen, given, stream=data.stream,
                              include_usage=bool(data.stream_options and data.stream_options.include_usage))

    @post("/completions", opt={"action": Action.MODEL_INVOKE}, operation_id="createCompletion", status_code=200)
    async def completions(self, request: Request, data: CompletionRequest) -> Any:
        data.unsupported()
        services = request.app.state.services
        params, given = sampling(data, services.settings.default_max_tokens)
        rid = request_id_of(request.scope) or ""
        gen = GenerationRequest(rid, params, prompt=data.text())
        principal = principal_of(request)
        prepared = await services.inference.prepare(request, principal, data.model, gen, max_tokens_given=given)
        cid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
        if data.stream:
            include_usage = bool(data.stream_options and data.stream_options.include_usage)
            deltas = await services.inference.open_stream(request, prepared)

            def render(d: StreamDelta) -> list[Any]:
                out: list[Any] = []
                if d.text or d.finish_reason:
                    out.append({"id": cid, "object": "text_completion", "created": created, "model": data.model,
                                "choices": [{"index": 0, "text": d.text, "logprobs": None,
                                             "finish_reason": d.finish_reason}]})
                if d.usage is not None and include_usage:
                    out.append({"id": cid, "object": "text_completion", "created": created, "model": data.model,
                                "choices": [], "usage": usage_dict(d.usage)})
                return out

            return sse_response(deltas, render, request_id=rid)
        result = await services.inference.complete(request, prepared)
        return {
            "id": cid, "object": "text_completion", "created": created, "model": data.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": usage_dict(result.usage),
        }

    @get("/models", opt={"action": Action.MODEL_LIST}, operation_id="listModels")
    async def list_models(self, request: Request) -> dict[str, Any]:
        services = request.app.state.services
        principal = principal_of(request)
        data = []
        for alias in sorted(services.router.aliases()):
            attrs = services.inference.model_attributes(alias)
            decision = await services.authorizer.decide(principal, Action.MODEL_INVOKE, {"model": alias, **attrs})
            if decision.allowed:
                data.append({"id": alias, "object": "model", "created": attrs.get("created", 0),
                             "owned_by": attrs.get("owner") or "palisade"})
        return {"object": "list", "data": data}


async def run_chat(
    request: Request, model: str, gen: GenerationRequest, max_tokens_given: bool, *, stream: bool,
    include_usage: bool, tgi_dialect: bool = False,
) -> Any:
    """Chat completion in OpenAI's shape; shared with TGI's /v1/chat/completions (same wire format)."""
    services = request.app.state.services
    principal = principal_of(request)
    prepared = await services.inference.prepare(request, principal, model, gen, max_tokens_given=max_tokens_given)
    cid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
    if stream:
        deltas = await services.inference.open_stream(request, prepared)
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
                out.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "system_fingerprint": FINGERPRINT,
                            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": d.finish_reason}]})
            if d.usage is not None and include_usage:
                out.append({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "system_fingerprint": FINGERPRINT, "choices": [], "usage": usage_dict(d.usage)})
            return out

        # TGI's client json-decodes every data line, so its dialect ends without OpenAI's [DONE] sentinel
        return sse_response(deltas, render, request_id=gen.request_id, done=not tgi_dialect)
    result = await services.inference.complete(request, prepared)
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                     "finish_reason": result.finish_reason}],
        "usage": usage_dict(result.usage),
    }


__all__ = ["OpenAIController", "Stream", "run_chat"]
