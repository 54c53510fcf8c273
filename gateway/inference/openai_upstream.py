"""OpenAI-compatible upstream (vLLM, SGLang): ``/chat/completions``, ``/completions``, SSE.

Requests go over the lean pooled HTTP/1.1 client of ``gateway.inference.http1`` (the hot path); timeouts,
error mapping and OpenAI shapes come from ``gateway.inference.upstream`` (shared with the TGI backend); this
module adds the request bodies and a spec-correct incremental SSE decoder. Bodies are encoded and decoded with
msgspec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.inference.base import (
    Backend,
    BackendError,
    BackendInputError,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
    Usage,
)
from gateway.inference.http1 import Http1Client, Http1Response
from gateway.inference.upstream import (
    Timeouts,
    chat_answer,
    chat_chunk,
    error_message,
    finish_reason,
    status_error,
    transport_error,
    usage_of,
)

log = logging.getLogger(__name__)

# below the idle timeout of common upstream servers (uvicorn, hence vLLM/SGLang: 5 s): a pooled connection is
# rarely reused just as the server closes it (http1 then sends the request once more, on a new connection)
_KEEPALIVE_S = 4.0
_DRAIN_S = 0.1  # after ``[DONE]``: how long to wait for the end of the response to keep the connection
_DRAIN_MAX_BYTES = 64 * 1024

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


# gc=False: these hold only strings, numbers and acyclic JSON values, so the collector need not track them; a
# 1,000-chunk stream decodes in half the time without the generation-0 collections its allocations would trigger
class _Delta(msgspec.Struct, gc=False):
    content: str | None = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: Any = None


class _Chunk(msgspec.Struct, gc=False):
    """The fields of an OpenAI stream chunk the gateway reads (the rest is skipped in C, never built)."""

    choices: list[_Choice]
    usage: Any = None


#: every event of one read decoded in ONE call (joined into a JSON array); anything this shape does not accept
#: (an error event, a missing or odd field, ``[DONE]``) sends that read through the per-event path instead,
#: which names what is wrong exactly as before
_decode_chunks = msgspec.json.Decoder(list[_Chunk]).decode
_NEXT_EVENT = b"\n\ndata: "
_DONE = b"[DONE]"


class _SSEDecoder:
    """Incremental ``text/event-stream`` decoder: bytes in any chunking → the ``data`` of each complete event.

    Lines end with LF, CRLF or CR (a CRLF split across two reads counts once); an event's ``data:`` lines are
    joined with LF and the event is dispatched at the blank line that ends it; other fields and comments are
    ignored. A line is only used once its terminator has arrived."""

    __slots__ = ("_buf", "_data", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._cr = False  # the previous chunk ended with CR: a leading LF is its CRLF's second half

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._cr:
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._buf:
            chunk = self._buf + chunk
        lines = chunk.split(b"\n")
        self._buf = lines.pop()  # the unterminated rest
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
        return events

    def feed_simple(self, chunk: bytes) -> tuple[bytes, bool] | None:
        """``feed`` for the shape OpenAI-compatible servers send: every event one ``data: `` line ending in LF LF.
        Returns the complete events' data joined by ``_NEXT_EVENT`` (so one ``replace`` makes them a JSON array:
        no per-event work in Python) and whether the last of them was ``[DONE]`` (left out of the data). None,
        with nothing consumed, when this read has another shape (CR, comments, other fields, multi-line data, a
        complete line of an unfinished event): ``feed`` takes it then, and gives the same events."""
        if self._cr or self._data or b"\r" in chunk:
            return None
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n\n")
        if end < 0 or not buf.startswith(b"data: ") or b"\n" in buf[end + 2 :]:
            return None
        joined = buf[6:end]
        if not joined or joined.startswith(b"\n"):  # an empty first event: ``feed`` reports it
            return None
        # each LF belongs to an event separator: no event has a second line, no blank line is extra
        if joined.count(b"\n") != 2 * joined.count(_NEXT_EVENT):
            return None
        self._buf = buf[end + 2 :]
        if joined == _DONE:
            return b"", True
        if joined.endswith(_NEXT_EVENT + _DONE):
            return joined[: -len(_NEXT_EVENT) - len(_DONE)], True
        return joined, False

    def finish(self) -> list[bytes]:
        """At the end of the stream: an event whose blank line never came still counts (lenient)."""
        if not self._data:
            return []
        data, self._data = self._data, []
        return [b"\n".join(data)]


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
        self.what = f"OpenAI endpoint {self.name}"
        self.upstream_model = upstream_model
        self.timeouts = Timeouts(connect_timeout_s, read_timeout_s, stream_idle_timeout_s, health_timeout_s)
        self.context_length = context_length
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = Http1Client(self.url, headers=headers, connect_timeout_s=connect_timeout_s,
                                max_connections=max_connections, keepalive_s=_KEEPALIVE_S)
        self._path = urlsplit(self.url).path  # the API base's path, e.g. /v1

    async def close(self) -> None:
        await self.http.close()

    async def _post(self, path: str, body: dict[str, Any]) -> Http1Response:
        return await self.http.request("POST", self._path + path, _encode(body), content_type="application/json")

    async def _status_of(self, path: str) -> int:
        """GET ``path`` within the health timeout, read to the end (the connection goes back to the pool)."""
        async with asyncio.timeout(self.timeouts.health):
            resp = await self.http.request("GET", path)
            try:
                await resp.read()
                return resp.status
            finally:
                resp.release()

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

    # ------------------------------------------------------------- requests
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        path, body = self._body(request, stream=False)
        try:
            async with asyncio.timeout(self.timeouts.first_byte):
                resp = await self._post(path, body)
                try:
                    status = resp.status
                    raw = await resp.read()
                finally:
                    resp.release()
        except Exception as exc:
            raise transport_error(exc, self.what, started=False) from exc
        if status != 200:
            raise status_error(status, error_message(raw), self.what)
        try:
            payload = _decode(raw)
        except ValueError:
            raise BackendError(f"upstream answered garbage ({self.what})") from None
        text, reason, usage = chat_answer(payload, self.what, chat=request.messages is not None)
        usage = usage or Usage(self.count_prompt_tokens(request), max(1, len(text) // 4))
        return GenerationResult(text=text, finish_reason=finish_reason(reason), usage=usage)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        path, body = self._body(request, stream=True)
        chat = request.messages is not None
        finish: FinishReason | None = None
        usage: Usage | None = None
        completion = 0
        started = False
        resp: Http1Response | None = None
        clean = False  # the response was read to its end (or to [DONE]): its connection may be pooled again
        try:
            try:
                async with asyncio.timeout(self.timeouts.first_byte):
                    resp = await self._post(path, body)
                    if resp.status != 200:
                        raw = await resp.read()
                        clean = True
                        raise status_error(resp.status, error_message(raw), self.what)
            except (BackendError, BackendInputError):
                raise
            except Exception as exc:
                raise transport_error(exc, self.what, started=False) from exc
            decoder = _SSEDecoder()
            done = False
            while not done:
                try:  # (what arrived before a connection broke is read before its error: those tokens count)
                    async with asyncio.timeout(self.timeouts.idle_s if started else self.timeouts.read_s):
                        chunk = await resp.readany()
                except Exception as exc:
                    raise transport_error(exc, self.what, started=True) from exc
                simple = None
                if not chunk:  # end of the response
                    events = decoder.finish()
                    clean = done = True
                elif (simple := decoder.feed_simple(chunk)) is None:
                    events = decoder.feed(chunk)
                # the events that arrived together leave together: when the upstream streams faster than the
                # client reads, their texts are joined into one delta (one SSE event downstream), so the gateway
                # never falls behind a fast upstream one event at a time; a slow upstream still gives one each
                texts: list[str] = []
                if simple is not None:  # the usual shape: decoded in one call, no event split apart in Python
                    joined, ends = simple
                    array = b"[" + joined.replace(_NEXT_EVENT, b",") + b"]" if joined else None
                else:
                    ends = bool(events) and events[-1].strip() == _DONE  # the usual last read: [DONE] at its end
                    batch = events[:-1] if ends else events
                    array = b"[" + b",".join(batch) + b"]" if batch else None
                try:
                    chunks = _decode_chunks(array) if array is not None else ()
                except msgspec.MsgspecError:
                    chunks = None
                    if simple is not None:  # the per-event path below names what is wrong
                        events = [*simple[0].split(_NEXT_EVENT), *((_DONE,) if simple[1] else ())]
                if chunks is not None:
                    if ends:
                        clean = done = True
                    for ch in chunks:
                        started = True
                        if ch.usage is not None and (ev_usage := usage_of(ch.usage)) is not None:
                            usage = ev_usage
                        if ch.choices:
                            choice = ch.choices[0]
                            if choice.finish_reason is not None:
                                finish = finish_reason(choice.finish_reason)
                            text = (choice.delta.content if choice.delta is not None else None) if chat \
                                else choice.text
                            if text:
                                completion += 1
                                texts.append(text)
                    events = ()
                for data in events:  # the per-event path (a read the batch decoder did not take)
                    if data.strip() == _DONE:
                        clean = done = True
                        break
                    started = True
                    try:
                        obj = _decode(data)
                    except ValueError:
                        raise BackendError(f"upstream answered garbage ({self.what}, bad stream event)") from None
                    text, reason, ev_usage = chat_chunk(obj, self.what, chat=chat)
                    if ev_usage is not None:
                        usage = ev_usage
                    if reason is not None:
                        finish = finish_reason(reason)
                    if text:
                        completion += 1
                        texts.append(text)
                if texts:
                    yield StreamDelta(text="".join(texts), pieces=len(texts))
            if finish is None:
                raise BackendError(f"{self.what} ended the stream without finishing")
            if usage is None:
                usage = Usage(prompt_tokens=self.count_prompt_tokens(request), completion_tokens=completion)
            yield StreamDelta(finish_reason=finish, usage=usage)
            # the consumer asked for more: wait (briefly) for the end of the response, so that its connection
            # goes back to the pool instead of being closed
            if not resp.at_eof():
                with contextlib.suppress(Exception):
                    drained = 0
                    async with asyncio.timeout(_DRAIN_S):
                        while drained <= _DRAIN_MAX_BYTES and (extra := await resp.readany()):
                            drained += len(extra)
        finally:
            if resp is not None:
                if clean:
                    resp.release()  # pooled again when read to its end, else its connection is closed
                else:
                    resp.close()  # an unfinished response closes its connection: the upstream sees us go

    async def health(self) -> bool:
        try:
            if await self._status_of(self._path + "/models") == 200:
                return True
            root = self._path.removesuffix("/v1")
            return root != self._path and await self._status_of(root + "/health") == 200
        except Exception:
            return False
