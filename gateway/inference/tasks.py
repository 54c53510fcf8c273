"""``palisade.inference.generate``: one chat completion from a job, through the same entry point as the API.

Jobs (evaluation of a candidate, dataset augmentation, a console "try it" run) call a served model for a
principal: the call is authorised, rate limited (at batch priority), routed, settled and audited exactly like
``POST /v1/chat/completions`` by that principal. Ids and plain values in, plain values out.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from gateway.context import RequestContext
from gateway.errors import ApiError, Forbidden
from gateway.inference.base import GenerationRequest, SamplingParams
from gateway.runtime import run_in_services
from gateway.services import Services


async def chat_for(
    services: Services, principal_id: str, alias: str, messages: list[dict[str, str]], *,
    max_tokens: int | None = None, temperature: float | None = None, request_id: str | None = None,
) -> dict[str, Any]:
    principal = await services.identity.principal_for(principal_id)
    if principal is None:  # revoked, disabled or gone since the job was queued: the job may not act for it
        raise Forbidden(f"{principal_id} may no longer act; the job stops")
    ctx = RequestContext.for_principal(principal, request_id=request_id, priority="batch")
    await services.models.ensure_loaded(alias)
    omitted = tuple(k for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is None)
    params = SamplingParams(max_tokens=max_tokens or 0, temperature=1.0 if temperature is None else temperature)
    done = await services.inference.generate(ctx, alias, GenerationRequest(ctx.request_id, params, messages=messages,
                                                                           omitted=omitted))
    return {"request_id": ctx.request_id, "text": done.result.text, "finish_reason": done.result.finish_reason,
            "usage": {"prompt_tokens": done.result.usage.prompt_tokens,
                      "completion_tokens": done.result.usage.completion_tokens},
            "model_version": done.version}


@shared_task(name="palisade.inference.generate")
def generate(principal_id: str, alias: str, messages: list[dict[str, str]], max_tokens: int | None = None,
             temperature: float | None = None) -> dict[str, Any]:
    try:
        return run_in_services(lambda s: chat_for(s, principal_id, alias, messages, max_tokens=max_tokens,
                                                  temperature=temperature))
    except ApiError as exc:  # a refusal is an answer, in the API's error shape, not a worker crash
        return {"error": exc.body(None)["error"], "status": exc.status_code}
