"""The inference pipeline shared by the OpenAI- and TGI-compatible routes.

authorize the model -> check prompt vs context and max_tokens -> reserve tokens -> audit -> generate/stream
-> settle with real usage -> audit with tokens, latency and status. Both API dialects call only this.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import structlog
from litestar.connection import ASGIConnection

from gateway.audit.events import AuditEvent, Tag
from gateway.authn.principal import Principal
from gateway.authz.actions import Action
from gateway.authz.guards import check
from gateway.errors import ApiError, BadRequest, NotFound, ServiceUnavailable, UpstreamTimeout
from gateway.inference.base import GenerationRequest, GenerationResult, StreamDelta, Usage
from gateway.limits import Reservation
from gateway.metrics import TOKENS
from gateway.middleware import request_id_of

_log = structlog.get_logger("palisade.inference")


@dataclass(slots=True)
class Prepared:
    principal: Principal
    alias: str
    request: GenerationRequest
    prompt_tokens: int
    reservation: Reservation
    started: float
    #: the model's audit retention: prompt and completion go into the record, encrypted
    retain: bool = False


class InferenceService:
    def __init__(self, services: Any) -> None:
        self.s = services

    def model_attributes(self, alias: str) -> dict[str, Any]:
        return self.s.model_attributes.get(alias, {"classification": "internal"})

    async def prepare(
        self,
        connection: ASGIConnection[Any, Any, Any, Any],
        principal: Principal,
        alias: str,
        req: GenerationRequest,
        *,
        max_tokens_given: bool,
    ) -> Prepared:
        router = self.s.router
        if not router.has(alias):
            raise NotFound(f"model '{alias}' does not exist", param="model", code="model_not_found")
        await check(connection, principal, Action.MODEL_INVOKE, {"model": alias, **self.model_attributes(alias)})
        settings = self.s.settings
        if req.params.max_tokens > settings.max_tokens_cap:
            raise BadRequest(
                f"max_tokens is {req.params.max_tokens}; this gateway allows at most {settings.max_tokens_cap}",
                param="max_tokens",
            )
        prompt_tokens = router.count_prompt_tokens(alias, req)
        ctx = router.context_length(alias)
        if ctx is not None:
            if prompt_tokens >= ctx:
                raise BadRequest(
                    f"the prompt is {prompt_tokens} tokens; model '{alias}' has a context of {ctx} tokens",
                    param="messages" if req.messages is not None else "prompt", code="context_length_exceeded",
                )
            room = ctx - prompt_tokens
            if req.params.max_tokens > room:
                if max_tokens_given:
                    raise BadRequest(
                        f"max_tokens {req.params.max_tokens} plus the prompt's {prompt_tokens} tokens exceeds "
                        f"model '{alias}' context of {ctx} tokens (at most {room} here)",
                        param="max_tokens", code="context_length_exceeded",
                    )
                req.params.max_tokens = room
        reservation = await self.s.limiter.reserve(principal, alias, prompt_tokens + req.params.max_tokens)
        if reservation.left:  # RateLimit headers on the answer too (the request-id middleware adds them)
            connection.scope["state"]["response_headers"] = reservation.headers()
        retain = bool(self.model_attributes(alias).get("retain_content"))
        return Prepared(principal, alias, req, prompt_tokens, reservation, time.perf_counter(), retain)

    async def complete(self, connection: ASGIConnection[Any, Any, Any, Any], p: Prepared) -> GenerationResult:
        status = "error"
        usage = Usage(prompt_tokens=p.prompt_tokens)
        settled = False
        try:
            try:
                async with asyncio.timeout(self.s.settings.request_timeout_s):
                    result = await self.s.router.generate(p.alias, p.request)
            except TimeoutError as exc:
                raise UpstreamTimeout("the model did not answer within the request timeout") from exc
            usage = result.usage
            status = "ok"
            # recorded before the answer leaves (an unaudited answer is never sent); returning the unused part
            # of the reservation overlaps the audit commit instead of adding a Redis round trip after it
            settled = True
            await asyncio.gather(
                self._audit(connection, p, Tag.INFERENCE, status, usage, completion=result.text),
                self._settle(p, usage),
            )
            return result
        except ApiError as exc:
            if status != "ok":
                await self._audit(connection, p, Tag.INFERENCE_FAILED, f"error:{exc.status_code}", usage)
            raise
        finally:
            if not settled:
                await self._settle(p, usage)

    async def open_stream(
        self, connection: ASGIConnection[Any, Any, Any, Any], p: Prepared
    ) -> AsyncIterator[StreamDelta]:
        """Audit the start (before any byte is sent), then return the delta iterator."""
        try:
            await self._audit(connection, p, Tag.STREAM_START, "started", Usage(prompt_tokens=p.prompt_tokens))
        except BaseException:
            await self._settle(p, Usage())
            raise
        return self._stream(connection, p)

    async def _stream(self, connection: ASGIConnection[Any, Any, Any, Any], p: Prepared) -> AsyncIterator[StreamDelta]:
        usage = Usage(prompt_tokens=p.prompt_tokens)
        status = "cancelled"
        produced = 0
        pieces: list[str] | None = [] if p.retain else None
        try:
            async with aclosing(self.s.router.stream(p.alias, p.request)) as deltas:
                async for delta in deltas:
                    if delta.text:
                        produced += 1
                        if pieces is not None:
                            pieces.append(delta.text)
                    if delta.usage is not None:
                        usage = delta.usage
                    if delta.finish_reason is not None:
                        status = "ok"
                    yield delta
        except ApiError as exc:
            status = f"error:{exc.status_code}"
            raise
        finally:
            if status != "ok":
                usage = Usage(p.prompt_tokens, max(usage.completion_tokens, produced))
            await self._settle(p, usage)
            try:
                await self._audit(connection, p, Tag.INFERENCE if status == "ok" else Tag.INFERENCE_FAILED,
                                  status, usage, completion="".join(pieces) if pieces is not None else None)
            except Exception as exc:  # the stream already left; record the gap loudly
                _log.error("audit of stream end failed", request_id=request_id_of(connection.scope),
                           error=type(exc).__name__)

    def _seal_content(self, p: Prepared, request_id: str, completion: str | None) -> str:
        """Prompt and completion, AES-GCM under the "prompts" data key, bound to this record's request id."""
        body = {"prompt": p.request.prompt, "messages": p.request.messages, "completion": completion}
        blob = self.s.keyring.encrypt(json.dumps(body).encode(), table="audit_records", row=request_id,
                                      field="content", purpose="prompts")
        return blob.hex()  # hex, so no credential-looking pattern can appear and get scrubbed

    async def _settle(self, p: Prepared, usage: Usage) -> None:
        TOKENS.labels(p.alias, "in").inc(usage.prompt_tokens)
        TOKENS.labels(p.alias, "out").inc(usage.completion_tokens)
        try:
            await self.s.limiter.settle(p.reservation, usage.total_tokens)
        except Exception as exc:
            _log.warning("limiter settle failed", error=type(exc).__name__)

    async def _audit(
        self,
        connection: ASGIConnection[Any, Any, Any, Any],
        p: Prepared,
        tag: str,
        status: str,
        usage: Usage,
        *,
        completion: str | None = None,
    ) -> None:
        request_id = request_id_of(connection.scope)
        event = AuditEvent(
            tag, actor=p.principal.id, target=p.alias, decision="allow", request_id=request_id,
            details={
                "status": status,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "latency_ms": round((time.perf_counter() - p.started) * 1000, 1),
                "stream": tag == Tag.STREAM_START or None,
                # how this request authenticated (the audit event of a bearer success, folded into this record):
                # the method and the credential's id (key id, token jti, session id), never the credential
                "auth_method": p.principal.auth_method,
                "auth_id": p.principal.key_id,
            },
        )
        if p.retain and tag != Tag.STREAM_START:
            event.details["content_enc"] = self._seal_content(p, request_id or "", completion)
        try:
            await self.s.audit.record(event)
        except Exception as exc:
            raise ServiceUnavailable("the audit trail cannot record this request; refusing to answer") from exc
