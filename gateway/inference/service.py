"""The one inference entry point: routes, Celery tasks (batches, evaluation, augmentation) and console pages call
it alike, with a ``RequestContext``.

authorize the model -> fill omitted sampling from the model's defaults -> check prompt vs context and max_tokens
-> reserve tokens -> record "accepted" while the upstream works -> generate/stream -> settle with real usage ->
record the completion with tokens, latency, status and version.

Two records per request, linked by request id (docs/security-audit-sequencing.md): the accepted record (who asked
for what: principal, model, credential, prompt tokens, origin) is queued on the group-commit writer before the
upstream is called, and the answer (or the stream's first byte) never leaves before it is durable: the answer
waits for max(upstream, commit), not their sum. The completion record is appended after the answer left, without
anyone waiting for it; one that is never written (a crash, a store that stopped accepting) is not silent:
``palisade audit verify`` lists its request as open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from gateway.audit.chain import AuditChain
from gateway.audit.events import AuditEvent, Tag
from gateway.authz.actions import Action
from gateway.authz.service import Authorization
from gateway.context import RequestContext
from gateway.crypto.keyring import Keyring
from gateway.errors import ApiError, BadRequest, ClientGone, NotFound, ServiceUnavailable, UpstreamTimeout
from gateway.inference.base import GenerationRequest, GenerationResult, StreamDelta, Usage
from gateway.inference.router import Router, RouterStream
from gateway.limits import Limiter, Reservation
from gateway.limits.config import PRIORITY_LOW
from gateway.metrics import TOKENS, child
from gateway.observability import tracing
from gateway.settings import Settings

_log = structlog.get_logger("palisade.inference")
VERSION_HEADER = "X-Palisade-Model-Version"
WATCH_AFTER_S = 0.1  # an answer (or a first token) slower than this watches for its caller leaving (_CancelIfGone)


class ServedModel(Protocol):
    """What the entry point needs of an alias (``gateway.models.catalog.ModelEntry``)."""

    state: str  # loading | ready | failed
    defaults: dict[str, Any]  # sampling defaults for what a request omits
    version: str | None
    retain_content: bool

    def attributes(self) -> dict[str, Any]: ...


class ModelDirectory(Protocol):
    """Where the entry point looks an alias up (``gateway.models.catalog.ModelCatalog``): the model domain sits
    above inference (it builds backends), so inference names only this."""

    def get(self, alias: str) -> ServedModel | None: ...


@dataclass(slots=True)
class Prepared:
    """An admitted request: authorised, within limits, its tokens reserved."""

    ctx: RequestContext
    alias: str
    request: GenerationRequest
    prompt_tokens: int
    reservation: Reservation
    started: float
    #: the model's audit retention: prompt and completion go into the record, encrypted
    retain: bool = False
    version: str | None = None
    #: response headers the caller sends with the answer (RateLimit, the serving model version)
    headers: dict[str, str] = field(default_factory=dict)
    #: the router pool this request goes to: the alias, or ``<alias>@canary`` when its canary takes it
    target: str = ""
    stream: bool = False

    def served_by(self, version: str | None) -> None:
        """The version the router chose (known once an endpoint is picked): header and audit record name it."""
        if version is not None:
            self.version = version
            self.headers[VERSION_HEADER] = version


@dataclass(slots=True)
class Completed:
    result: GenerationResult
    headers: dict[str, str]
    version: str | None


class InferenceService:
    def __init__(
        self, settings: Settings, router: Router, models: ModelDirectory, authz: Authorization, limiter: Limiter,
        audit: AuditChain, keyring: Keyring,
    ) -> None:
        self.settings = settings
        self.router = router
        self.models = models
        self.authz = authz
        self.limiter = limiter
        self.audit = audit
        self.keyring = keyring

    # ------------------------------------------------------------------ one call
    async def generate(self, ctx: RequestContext, alias: str, req: GenerationRequest) -> Completed:
        """Prepare and complete in one call (jobs; the non-streaming routes use the two steps)."""
        p = await self.prepare(ctx, alias, req)
        result = await self.complete(p)
        return Completed(result, p.headers, p.version)

    async def stream(self, ctx: RequestContext, alias: str, req: GenerationRequest) -> AsyncIterator[StreamDelta]:
        p = await self.prepare(ctx, alias, req)
        return await self.open_stream(p)

    # ------------------------------------------------------------------ steps
    async def prepare(self, ctx: RequestContext, alias: str, req: GenerationRequest) -> Prepared:
        entry = self.models.get(alias)
        if entry is None:
            raise NotFound(f"model '{alias}' does not exist", param="model", code="model_not_found")
        await self.authz.require(ctx, Action.MODEL_INVOKE, {"model": alias, **entry.attributes()})
        if entry.state != "ready" or not self.router.has(alias):
            why = "is still loading" if entry.state == "loading" else "failed to load"
            raise ServiceUnavailable(f"model '{alias}' {why}; try again shortly", headers={"Retry-After": "5"},
                                     code="model_unavailable")
        params = req.params
        max_tokens_given = "max_tokens" not in req.omitted
        for key in req.omitted:  # what the request left out comes from the model's defaults (as vLLM does)
            if key == "max_tokens":
                params.max_tokens = int(entry.defaults.get("max_tokens", self.settings.default_max_tokens))
            elif key in entry.defaults:
                setattr(params, key, float(entry.defaults[key]))
        if params.max_tokens > self.settings.max_tokens_cap:
            raise BadRequest(
                f"max_tokens is {params.max_tokens}; this gateway allows at most {self.settings.max_tokens_cap}",
                param="max_tokens",
            )
        # a canary takes its share by a hash of the request id, or every request of its named principals
        target = self.router.route_for(alias, principal=ctx.principal.id, key=ctx.request_id)
        prompt_tokens = self.router.count_prompt_tokens(target, req)
        context = self.router.context_length(target)
        if context is not None:
            if prompt_tokens >= context:
                raise BadRequest(
                    f"the prompt is {prompt_tokens} tokens; model '{alias}' has a context of {context} tokens",
                    param="messages" if req.messages is not None else "prompt", code="context_length_exceeded",
                )
            room = context - prompt_tokens
            if params.max_tokens > room:
                if max_tokens_given:
                    raise BadRequest(
                        f"max_tokens {params.max_tokens} plus the prompt's {prompt_tokens} tokens exceeds "
                        f"model '{alias}' context of {context} tokens (at most {room} here)",
                        param="max_tokens", code="context_length_exceeded",
                    )
                params.max_tokens = room
        if not await self.audit.accepting():  # its record could not be written: no model time, no reservation
            raise ServiceUnavailable("the audit trail cannot record this request; refusing to answer",
                                     headers={"Retry-After": "5"})
        priority = PRIORITY_LOW if ctx.priority == "batch" else None
        with tracing.span("limits", model=alias, tokens=prompt_tokens + params.max_tokens):
            reservation = await self.limiter.reserve(ctx.principal, alias, prompt_tokens + params.max_tokens,
                                                     priority=priority)
        return Prepared(ctx, alias, req, prompt_tokens, reservation, time.perf_counter(), entry.retain_content,
                        None, reservation.headers(), target)

    async def complete(self, p: Prepared) -> GenerationResult:
        accepted = self._accept(p, Tag.INFERENCE_ACCEPTED)  # committed while the upstream works
        status = "cancelled"
        usage = Usage(prompt_tokens=p.prompt_tokens)
        settled = False
        try:
            try:
                async with _CancelIfGone(p.ctx.gone, self.settings.request_timeout_s):
                    result = await self.router.generate(p.target or p.alias, p.request)
            except TimeoutError as exc:
                pool = p.target or p.alias  # the router saw a cancellation: count the timeout against the version
                self.router.observe(pool, self.router.version(pool), p.started, error=True)
                raise UpstreamTimeout("the model did not answer within the request timeout") from exc
            usage = result.usage
            p.served_by(result.model_version)
            # the unused part of the reservation goes back without holding the answer (sent in the background,
            # before this process's next reserve); the answer leaves only once its accepted record is durable
            # (an unaudited answer is never sent)
            settled = True
            self._release(p, usage)
            await self._durable(accepted)
            status = "ok"
            self._complete(p, Tag.INFERENCE, status, usage, completion=result.text)
            return result
        except ClientGone:
            raise  # still "cancelled": the finally below records it and settles
        except ApiError as exc:
            if status != "ok":
                status = f"error:{exc.status_code}"
                # the accepted record first: refused -> 503 instead, whatever the upstream said, and no completion
                # (a request the trail never accepted is not billed in it either)
                await self._durable(accepted)
                self._complete(p, Tag.INFERENCE_FAILED, status, usage)
            raise
        except Exception:
            if status != "ok":
                status = "error"
                self._complete(p, Tag.INFERENCE_FAILED, status, usage)
            raise
        finally:
            if status == "cancelled":  # the caller went away: the request still ends in the trail
                self._complete(p, Tag.INFERENCE_FAILED, status, usage)
            if not settled:
                self._release(p, usage)

    async def open_stream(self, p: Prepared) -> AsyncIterator[StreamDelta]:
        """Record the start (the accepted record), ask the upstream for the first delta while that record
        commits, and return the delta iterator (every delta from one version) once both are there: the first
        byte waits for max(upstream's first token, commit), not their sum, and never leaves before the record
        is durable. An upstream that fails before its first token answers with an HTTP error, not a 200 whose
        body is an error event; a caller that leaves before it (``ctx.gone``) cancels the upstream request
        (ClientGone, 499)."""
        accepted = self._accept(p, Tag.STREAM_START)
        opened: RouterStream | None = None
        try:
            opened = await self.router.open_stream(p.target or p.alias, p.request)
            p.served_by(opened.version)
            async with _CancelIfGone(p.ctx.gone):
                first = await anext(opened, None)
        except BaseException as exc:
            if opened is not None:
                await opened.aclose()
            self._release(p, Usage())
            failed = isinstance(exc, ApiError) and not isinstance(exc, ClientGone)
            status = f"error:{exc.status_code}" if failed else "cancelled"
            if failed:
                await self._durable(accepted)  # an error answer too leaves once the start is durable (else 503)
            self._complete(p, Tag.INFERENCE_FAILED, status, Usage(prompt_tokens=p.prompt_tokens))
            raise
        try:
            await self._durable(accepted)
        except BaseException as exc:
            await opened.aclose()
            self._release(p, Usage())
            if not isinstance(exc, ApiError):  # refused: the trail never accepted it, so no completion either
                self._complete(p, Tag.INFERENCE_FAILED, "cancelled", Usage(prompt_tokens=p.prompt_tokens))
            raise
        return OpenedStream(self, p, opened, first)

    # ------------------------------------------------------------------ settle and audit
    def _seal_content(self, p: Prepared, completion: str | None) -> str:
        """Prompt and completion, AES-GCM under the "prompts" data key, bound to this record's request id."""
        body = {"prompt": p.request.prompt, "messages": p.request.messages, "completion": completion}
        blob = self.keyring.encrypt(json.dumps(body).encode(), table="audit_records", row=p.ctx.request_id,
                                    field="content", purpose="prompts")
        return blob.hex()  # hex, so no credential-looking pattern can appear and get scrubbed

    def _release(self, p: Prepared, usage: Usage) -> None:
        child(TOKENS, p.alias, "in").inc(usage.prompt_tokens)
        child(TOKENS, p.alias, "out").inc(usage.completion_tokens)
        try:
            self.limiter.release(p.reservation, usage.total_tokens)
        except Exception as exc:
            _log.warning("limiter settle failed", error=type(exc).__name__)

    def _details(self, p: Prepared, status: str, usage: Usage) -> dict[str, Any]:
        return {
            "status": status,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "latency_ms": round((time.perf_counter() - p.started) * 1000, 1),
            "stream": True if p.stream else None,
            # how this request authenticated (the audit event of a bearer success, folded into this record):
            # the method and the credential's id (key id, token jti, session id), never the credential
            "auth_method": p.ctx.principal.auth_method,
            "auth_id": p.ctx.principal.key_id,
            "model_version": p.version,
            "route": p.target if p.target != p.alias else None,
        }

    def _accept(self, p: Prepared, tag: str) -> asyncio.Future[int]:
        """Queue the accepted record (who asked for what) on the group-commit writer and return at once: the
        caller awaits ``_durable`` on it before any answer byte leaves. The version is the one the route points
        at now; the completion names the version that answered."""
        p.stream = tag == Tag.STREAM_START
        details: dict[str, Any] = {
            "status": "started" if p.stream else "accepted",
            "prompt_tokens": p.prompt_tokens,
            "max_tokens": p.request.params.max_tokens,
            "stream": True if p.stream else None,
            "auth_method": p.ctx.principal.auth_method,
            "auth_id": p.ctx.principal.key_id,
            "routed_version": self.router.version(p.target or p.alias),
            "route": p.target if p.target != p.alias else None,
        }
        if p.retain:  # the prompt, so a request answered but never completed in the trail still shows what
            details["content_enc"] = self._seal_content(p, None)
        return self.audit.submit(AuditEvent.of(p.ctx, tag, target=p.alias, decision="allow", **details))

    async def _durable(self, accepted: asyncio.Future[int]) -> None:
        try:
            with tracing.span("audit.record", tag="accepted"):  # what is left of its commit after the upstream
                await accepted
        except Exception as exc:
            raise ServiceUnavailable("the audit trail cannot record this request; refusing to answer") from exc

    def _complete(self, p: Prepared, tag: str, status: str, usage: Usage, *, completion: str | None = None) -> None:
        """The completion record (everything the accepted one says, plus how it ended), after the answer left:
        nobody waits for it; a failure is logged and counted by the chain, and verify lists the request as open."""
        details = self._details(p, status, usage)
        if p.retain:
            details["content_enc"] = self._seal_content(p, completion)
        try:
            self.audit.record_later(AuditEvent.of(p.ctx, tag, target=p.alias, decision="allow", **details))
        except Exception as exc:  # never raised to the client: the answer is already on its way
            _log.error("audit completion could not be queued", request_id=p.ctx.request_id,
                       error=type(exc).__name__)


class _CancelIfGone:
    """Cancels the work inside it when the caller leaves (``gone``, see ``RequestContext.gone``) and raises
    ClientGone instead, so a client that hangs up on a long answer (or before a stream's first token) frees the
    model's slot instead of leaving it to decode for nobody until the request timeout. It watches only once the
    work has taken WATCH_AFTER_S: work faster than that pays one timer, not a task (a disconnect that came
    earlier is seen at once then). With ``timeout_s`` it is also the work's deadline (TimeoutError, as
    ``asyncio.timeout`` raises) on the same first timer: a fast answer pays one timer for both."""

    __slots__ = ("_gone", "_timeout_s", "_task", "_timer", "_watch", "_fired", "_end")

    def __init__(self, gone: Callable[[], Awaitable[None]] | None, timeout_s: float | None = None) -> None:
        self._gone = gone
        self._timeout_s = timeout_s
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watch: asyncio.Future[None] | None = None
        self._fired: type[BaseException] | None = None  # what our cancellation becomes: ClientGone or TimeoutError
        self._end: float | None = None

    async def __aenter__(self) -> None:
        if self._gone is None and self._timeout_s is None:
            return
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        first = WATCH_AFTER_S if self._gone is not None else self._timeout_s
        if self._timeout_s is not None:
            self._end = loop.time() + self._timeout_s
            first = min(first, self._timeout_s)  # type: ignore[type-var]
        self._timer = loop.call_later(first, self._start)  # type: ignore[arg-type]

    def _start(self) -> None:
        self._timer = None
        if self._end is not None:  # the deadline's own timer, for work slower than the first one
            loop = asyncio.get_running_loop()
            left = self._end - loop.time()
            if left <= 0:
                self._cancel(TimeoutError)
                return
            self._timer = loop.call_later(left, self._cancel, TimeoutError)
        if self._gone is not None:
            self._watch = asyncio.ensure_future(self._wait())

    async def _wait(self) -> None:
        await self._gone()  # type: ignore[misc]
        self._cancel(ClientGone)

    def _cancel(self, why: type[BaseException]) -> None:
        if self._fired is None:
            self._fired = why
            self._task.cancel()  # type: ignore[union-attr]

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._task is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()
        # our cancellation (not one from outside, which counts too) becomes ClientGone or TimeoutError
        if self._fired is not None and self._task.uncancel() == 0 and exc_type is asyncio.CancelledError:
            if self._fired is TimeoutError:
                raise TimeoutError from exc
            raise ClientGone("the client went away before the answer") from exc


class OpenedStream:
    """The deltas of an opened stream, the first of them already read. Its end (the last delta, an error, or
    ``aclose``) writes the completion record and settles the reservation, once; ``aclose`` does it too when
    nothing was ever iterated (a client gone before the body started), unlike an async generator that never
    ran its ``finally``."""

    __slots__ = ("_service", "_p", "_opened", "_next", "_usage", "_status", "_produced", "_pieces", "_ended")

    def __init__(self, service: InferenceService, p: Prepared, opened: RouterStream, first: StreamDelta | None):
        self._service = service
        self._p = p
        self._opened = opened
        self._next = first
        self._usage = Usage(prompt_tokens=p.prompt_tokens)
        self._status = "cancelled"
        self._produced = 0
        self._pieces: list[str] | None = [] if p.retain else None
        self._ended = False

    def __aiter__(self) -> OpenedStream:
        return self

    async def __anext__(self) -> StreamDelta:
        delta = self._next
        if delta is not None:
            self._next = None
        elif self._ended:
            raise StopAsyncIteration
        else:
            try:
                delta = await self._opened.__anext__()
            except BaseException as exc:  # the end (StopAsyncIteration), an error, or a cancellation
                if isinstance(exc, ApiError):
                    self._status = f"error:{exc.status_code}"
                await self.aclose()
                raise
        if delta.text:
            self._produced += delta.pieces
            if self._pieces is not None:
                self._pieces.append(delta.text)
        if delta.usage is not None:
            self._usage = delta.usage
        if delta.finish_reason is not None:
            self._status = "ok"
        return delta

    async def aclose(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._next = None
        p, status, usage = self._p, self._status, self._usage
        try:
            await self._opened.aclose()
        finally:
            if status != "ok":
                usage = Usage(p.prompt_tokens, max(usage.completion_tokens, self._produced))
            self._service._complete(p, Tag.INFERENCE if status == "ok" else Tag.INFERENCE_FAILED, status, usage,
                                    completion="".join(self._pieces) if self._pieces is not None else None)
            self._service._release(p, usage)
