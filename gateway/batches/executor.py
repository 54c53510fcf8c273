"""The real ``Executor``: a batch line goes through the one inference entry point, as the batch owner.

``services.inference.generate(ctx, alias, request)`` authorises the model (policy and the credential's model scope),
reserves and settles tokens at batch priority (shed before interactive traffic when a model is saturated), routes,
and writes the line's audit record, exactly as for ``POST /v1/chat/completions``; the answer body is the API's
JSON. The line's request id is its audit record's, so feedback can rate a batch line like any other answer.
The owner is looked up again when a runner starts: a revoked or disabled owner's remaining lines are refused.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec

from gateway.api.openai_api import FINGERPRINT, sampling, usage_dict
from gateway.api.schemas import ChatCompletionRequest
from gateway.authz.actions import Action
from gateway.batches.lines import ENDPOINTS, Line
from gateway.context import Principal, RequestContext
from gateway.errors import ApiError, Forbidden
from gateway.inference.base import GenerationRequest, GenerationResult
from gateway.services import Services


def render(endpoint: str, model: str, result: GenerationResult) -> dict[str, Any]:
    """The response body the HTTP API sends for this result (OpenAI's chat.completion / text_completion)."""
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


class ServicesExecutor:
    """Runs lines through ``services.inference`` as ``principal`` (None: the owner may no longer act)."""

    def __init__(self, services: Services, principal: Principal | None, endpoint: str) -> None:
        self.s = services
        self.principal = principal
        self.endpoint = endpoint

    @classmethod
    async def for_owner(cls, services: Services, owner: str, endpoint: str) -> ServicesExecutor:
        return cls(services, await services.identity.principal_for(owner), endpoint)

    def _ctx(self, request_id: str | None = None) -> RequestContext:
        assert self.principal is not None
        return RequestContext.for_principal(self.principal, request_id=request_id, priority="batch")

    async def model_allowed(self, model: str) -> bool:
        entry = self.s.models.get(model)
        if entry is None or self.principal is None:
            return False
        decision = await self.s.authz.decide(self._ctx(), Action.MODEL_INVOKE, {"model": model, **entry.attributes()})
        return decision.allowed

    async def infer(self, line: Line, request_id: str) -> tuple[int, dict[str, Any]]:
        try:
            if self.principal is None:
                raise Forbidden("the batch's owner may no longer act (revoked, disabled or deleted)")
            body = msgspec.convert(line.body, ENDPOINTS[self.endpoint])
            params, omitted = sampling(body)
            if isinstance(body, ChatCompletionRequest):
                gen = GenerationRequest(request_id, params, messages=body.plain_messages(), omitted=omitted)
            else:
                gen = GenerationRequest(request_id, params, prompt=body.text(), omitted=omitted)
            await self.s.models.ensure_loaded(body.model)  # a worker loads the models its batches call
            done = await self.s.inference.generate(self._ctx(request_id), body.model, gen)
        except ApiError as exc:
            return exc.status_code, exc.body(request_id)
        return 200, render(self.endpoint, body.model, done.result)
