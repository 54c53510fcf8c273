"""The real ``Executor``: a batch line goes through the gateway's one inference pipeline, as the batch owner.

Authorisation (model invoke, the credential's model scope), limits, routing, settling and the per-line audit record
are the pipeline's, exactly as for ``POST /v1/chat/completions``; the answer body is the API's JSON. The line's
request id is the audit record's request id, so feedback can rate a batch line like any other answer.
"""

from __future__ import annotations

import secrets
import time
from types import SimpleNamespace
from typing import Any

import msgspec

from gateway.api.schemas import ChatCompletionRequest, CompletionRequest
from gateway.authn.principal import Principal
from gateway.authz.actions import Action
from gateway.batches.lines import ENDPOINTS, Line
from gateway.errors import ApiError
from gateway.inference.base import GenerationRequest, GenerationResult, SamplingParams

FINGERPRINT = "palisade"


def sampling(body: ChatCompletionRequest | CompletionRequest, default_max: int) -> tuple[SamplingParams, bool]:
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    params = SamplingParams(max_tokens=max_tokens or default_max,
                            temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, stop=body.stops())
    return params, max_tokens is not None


def usage_dict(u: Any) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


def render(endpoint: str, model: str, result: GenerationResult) -> dict[str, Any]:
    """The response body the HTTP API would send for this result (OpenAI's chat.completion / text_completion)."""
    created = int(time.time())
    if endpoint == "/v1/chat/completions":
        return {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": created,
                "model": model, "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "logprobs": None, "finish_reason": result.finish_reason}],
                "usage": usage_dict(result.usage)}
    return {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": usage_dict(result.usage)}


def error_body(exc: ApiError, request_id: str) -> dict[str, Any]:
    return exc.body(request_id)


class ServicesExecutor:
    """Runs lines through ``services.inference`` as ``principal`` (the batch owner at creation)."""

    def __init__(self, services: Any, principal: Principal, endpoint: str) -> None:
        self.s = services
        self.principal = principal
        self.endpoint = endpoint

    async def model_allowed(self, model: str) -> bool:
        if not self.s.router.has(model):
            return False
        attrs = self.s.inference.model_attributes(model)
        decision = await self.s.authorizer.decide(self.principal, Action.MODEL_INVOKE, {"model": model, **attrs})
        return decision.allowed

    async def infer(self, line: Line, request_id: str) -> tuple[int, dict[str, Any]]:
        body = msgspec.convert(line.body, ENDPOINTS[self.endpoint])
        params, given = sampling(body, self.s.settings.default_max_tokens)
        if isinstance(body, ChatCompletionRequest):
            gen = GenerationRequest(request_id, params, messages=body.plain_messages())
        else:
            gen = GenerationRequest(request_id, params, prompt=body.text())
        conn = _connection(self.s, request_id)
        try:
            prepared = await self.s.inference.prepare(conn, self.principal, body.model, gen, max_tokens_given=given)
            result = await self.s.inference.complete(conn, prepared)
        except ApiError as exc:
            return exc.status_code, error_body(exc, request_id)
        return 200, render(self.endpoint, body.model, result)


def _connection(services: Any, request_id: str) -> Any:
    """What today's pipeline reads from a connection (services, request id) for a request without one."""
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(services=services)),
                           scope={"state": {"request_id": request_id}}, client=None)
