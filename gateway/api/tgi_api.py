"""TGI-compatible routes under /tgi/{model}, so ``text_generation.Client(base_url=f"{gw}/tgi/{model}")`` works.

TGI's wire format: ``{"inputs": str, "parameters": {...}, "stream": bool}``; ``POST /`` answers a one-element
list (or SSE when ``stream``), ``/generate`` one object, ``/generate_stream`` SSE token events.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, post

from gateway.api.deps import ContextDep, ServicesDep
from gateway.api.openai_api import run_chat, sampling
from gateway.api.schemas import ChatCompletionRequest, PositiveInt
from gateway.api.sse import sse_response
from gateway.authz.actions import Action
from gateway.errors import BadRequest
from gateway.inference.base import GenerationRequest, GenerationResult, SamplingParams, StreamDelta

_FINISH = {"stop": "eos_token", "length": "length", "cancelled": "eos_token"}


class TGIParameters(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_new_tokens: PositiveInt | None = None
    do_sample: bool = False
    temperature: Annotated[float, msgspec.Meta(gt=0.0, le=100.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stop: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(max_length=4)] = []
    details: bool = True
    decoder_input_details: bool = False
    adapter_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    # accepted because the official client always sends them; refused when set to something we cannot honour
    top_k: int | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    return_full_text: bool | None = False
    truncate: int | None = None
    best_of: int | None = None
    watermark: bool = False
    top_n_tokens: int | None = None
    grammar: Any | None = None

    def check_supported(self) -> None:
        for name in ("top_k", "typical_p", "truncate", "top_n_tokens", "grammar"):
            if getattr(self, name) is not None:
                raise BadRequest(f"parameters.{name} is not supported", param=f"parameters.{name}")
        if self.repetition_penalty not in (None, 1.0) or self.frequency_penalty not in (None, 0.0):
            raise BadRequest("repetition and frequency penalties are not supported", param="parameters")
        if self.return_full_text or self.watermark or self.best_of not in (None, 1):
            raise BadRequest("return_full_text, watermark and best_of are not supported", param="parameters")
        if self.adapter_id is not None:
            # the weights that answer are the alias's registry version (approved by four eyes, audited by version);
            # a caller naming an adapter loaded upstream would bypass that
            raise BadRequest("parameters.adapter_id is not accepted: the model alias chooses the adapter (a registry "
                             "version with adapter_id); call the alias that serves it", param="parameters.adapter_id")


class TGIRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    inputs: Annotated[str, msgspec.Meta(min_length=1)]
    parameters: TGIParameters = msgspec.field(default_factory=TGIParameters)
    stream: bool = False


class TGIChatRequest(ChatCompletionRequest, kw_only=True):
    """TGI's Messages API: OpenAI's chat body plus the extra (null) fields TGI's client sends."""

    model: Annotated[str, msgspec.Meta(max_length=256)] = "tgi"  # type: ignore[assignment]
    logit_bias: Any | None = None  # type: ignore[assignment]
    repetition_penalty: float | None = None
    top_logprobs: int | None = None
    tool_prompt: str | None = None


def _gen_request(ctx: ContextDep, data: TGIRequest) -> GenerationRequest:
    p = data.parameters
    p.check_supported()
    temperature = p.temperature if p.temperature is not None else 1.0
    params = SamplingParams(
        max_tokens=p.max_new_tokens or 0,
        temperature=temperature if p.do_sample or p.temperature is not None else 0.0,
        top_p=p.top_p or 1.0,
        seed=p.seed,
        stop=list(p.stop),
    )
    # TGI's own default is greedy unless do_sample: only the length is left to the model's defaults
    omitted = () if p.max_new_tokens is not None else ("max_tokens",)
    return GenerationRequest(ctx.request_id, params, prompt=data.inputs, omitted=omitted)


def _response(result: GenerationResult, seed: int | None) -> dict[str, Any]:
    return {
        "generated_text": result.text,
        "details": {
            "finish_reason": _FINISH[result.finish_reason],
            "generated_tokens": result.usage.completion_tokens,
            "seed": seed,
            "prefill": [],
            "tokens": [],
        },
    }


class TGIController(Controller):
    path = "/tgi/{model:str}"
    tags = ["tgi"]

    async def _generate(
        self, services: ServicesDep, ctx: ContextDep, model: str, data: TGIRequest, *, stream: bool, listed: bool
    ) -> Any:
        gen = _gen_request(ctx, data)
        prepared = await services.inference.prepare(ctx, model, gen)
        if not stream:
            result = await services.inference.complete(prepared)
            body = _response(result, gen.params.seed)
            return Response([body] if listed else body, headers=prepared.headers)
        deltas = await services.inference.open_stream(prepared)
        text: list[str] = []
        index = 0

        def render(d: StreamDelta) -> list[Any]:
            nonlocal index
            text.append(d.text)
            index += 1
            event: dict[str, Any] = {
                "index": index,
                "token": {"id": 0, "text": d.text, "logprob": None, "special": False},
                "generated_text": None,
                "details": None,
            }
            if d.finish_reason is not None:
                event["generated_text"] = "".join(text)
                event["details"] = {
                    "finish_reason": _FINISH[d.finish_reason],
                    "generated_tokens": d.usage.completion_tokens if d.usage else index,
                    "seed": gen.params.seed,
                    "input_length": d.usage.prompt_tokens if d.usage else None,
                }
            return [event] if (d.text or d.finish_reason) else []

        return sse_response(deltas, render, request_id=gen.request_id, done=False, headers=prepared.headers)

    @post("/", opt={"action": Action.MODEL_INVOKE}, operation_id="tgiCompatGenerate", status_code=200)
    async def compat(self, services: ServicesDep, ctx: ContextDep, model: str, data: TGIRequest) -> Any:
        return await self._generate(services, ctx, model, data, stream=data.stream, listed=True)

    @post("/generate", opt={"action": Action.MODEL_INVOKE}, operation_id="tgiGenerate", status_code=200)
    async def generate(self, services: ServicesDep, ctx: ContextDep, model: str, data: TGIRequest) -> Any:
        return await self._generate(services, ctx, model, data, stream=False, listed=False)

    @post("/generate_stream", opt={"action": Action.MODEL_INVOKE}, operation_id="tgiGenerateStream", status_code=200)
    async def generate_stream(self, services: ServicesDep, ctx: ContextDep, model: str, data: TGIRequest) -> Any:
        return await self._generate(services, ctx, model, data, stream=True, listed=False)

    @post(
        "/v1/chat/completions", opt={"action": Action.MODEL_INVOKE}, operation_id="tgiChatCompletion", status_code=200
    )
    async def chat(self, services: ServicesDep, ctx: ContextDep, model: str, data: TGIChatRequest) -> Any:
        data.unsupported()
        params, omitted = sampling(data)
        gen = GenerationRequest(ctx.request_id, params, messages=data.plain_messages(), omitted=omitted)
        return await run_chat(
            services,
            ctx,
            model,
            gen,
            stream=data.stream,
            include_usage=bool(data.stream_options and data.stream_options.include_usage),
            tgi_dialect=True,
        )
