"""TGI and OpenAI-compatible backends against real (fake) upstream HTTP servers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.inference.base import (
    BackendConnectError,
    BackendError,
    BackendInputError,
    BackendTimeout,
    GenerationRequest,
    SamplingParams,
)
from gateway.inference.openai_upstream import OpenAIBackend, _SSEDecoder
from gateway.inference.tgi import TGIBackend
from tests.support.fake_upstreams import FakeServer, FakeUpstreamApp, serve_fake

TIMEOUTS = {"connect_timeout_s": 0.5, "read_timeout_s": 0.5, "stream_idle_timeout_s": 0.5}
PROTOCOLS = ["tgi", "openai"]


def make_backend(protocol: str, url: str, **kw):
    opts = {**TIMEOUTS, **kw}
    if protocol == "tgi":
        return TGIBackend(url, name="tgi-test", **opts)
    return OpenAIBackend(url, name="openai-test", upstream_model="fake-model", **opts)


def prompt_req(text: str = "hello there world", max_tokens: int = 16, **kw) -> GenerationRequest:
    return GenerationRequest(request_id="r1", prompt=text, params=SamplingParams(max_tokens=max_tokens, **kw))


def chat_req(text: str = "hello there world", max_tokens: int = 16) -> GenerationRequest:
    return GenerationRequest(
        request_id="r2",
        params=SamplingParams(max_tokens=max_tokens),
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
    )


async def collect(backend, req):
    deltas = []
    async for d in backend.stream(req):
        deltas.append(d)
    return deltas


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["prompt", "chat"])
async def test_generate_and_stream_ok(protocol: str, kind: str) -> None:
    with serve_fake("ok", protocol) as srv:
        backend = make_backend(protocol, srv.url)
        try:
            req = prompt_req() if kind == "prompt" else chat_req()
            result = await backend.generate(req)
            assert result.text == "Echo: hello there world"
            assert result.finish_reason == "stop"
            assert result.usage.completion_tokens == 4
            assert result.usage.prompt_tokens > 0

            deltas = await collect(backend, req)
            assert "".join(d.text for d in deltas) == "Echo: hello there world"
            assert deltas[-1].finish_reason == "stop"
            assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 4
            assert all(d.finish_reason is None for d in deltas[:-1])

            short = prompt_req(max_tokens=2) if kind == "prompt" else chat_req(max_tokens=2)
            result = await backend.generate(short)
            assert result.finish_reason == "length" and result.text == "Echo: hello "
            assert await backend.health() is True
        finally:
            await backend.close()


async def test_tgi_wire_parameters() -> None:
    with serve_fake("ok", "tgi") as srv:
        backend = make_backend("tgi", srv.url)
        try:
            greedy = SamplingParams(max_tokens=5, temperature=0.0, top_p=0.9, stop=["\n"])
            await backend.generate(GenerationRequest(request_id="r", prompt="hi", params=greedy))
            params = srv.stats.last_body["parameters"]
            assert "adapter_id" not in params  # only a version's spec names an adapter
            assert params["do_sample"] is False and params["max_new_tokens"] == 5 and params["stop"] == ["\n"]
            assert params.get("top_p") is None and params["details"] is True

            sampled = SamplingParams(max_tokens=5, temperature=0.7, top_p=0.9, seed=7)
            await backend.generate(GenerationRequest(request_id="r", prompt="hi", params=sampled))
            params = srv.stats.last_body["parameters"]
            assert params["do_sample"] is True and params["temperature"] == 0.7 and params["top_p"] == 0.9
            assert params["seed"] == 7 and "adapter_id" not in params
        finally:
            await backend.close()


async def test_openai_wire_parameters_and_key() -> None:
    with serve_fake("ok", "openai") as srv:
        backend = OpenAIBackend(srv.url, name="o", upstream_model="gpt-x", api_key="sekrit", **TIMEOUTS)
        try:
            deltas = await collect(backend, chat_req())
            body = srv.stats.last_body
            assert body["model"] == "gpt-x" and body["stream"] is True
            assert body["stream_options"] == {"include_usage": True}
            assert deltas[-1].usage.prompt_tokens > 0
        finally:
            await backend.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_die_mid_stream_raises_after_first_deltas(protocol: str) -> None:
    with serve_fake("die_mid_stream", protocol) as srv:
        backend = make_backend(protocol, srv.url)
        try:
            got = []
            start = time.monotonic()
            with pytest.raises(BackendError) as info:
                async for d in backend.stream(prompt_req("one two three four five")):
                    got.append(d.text)
            assert not isinstance(info.value, BackendConnectError | BackendTimeout)
            # what arrived before the drop, as it arrived (events that come together may leave as one delta)
            assert "".join(got) == "Echo: one " and got[0].startswith("Echo")
            assert time.monotonic() - start < 2
            with pytest.raises(BackendError):
                await backend.generate(prompt_req())
        finally:
            await backend.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_hang_times_out(protocol: str) -> None:
    with serve_fake("hang", protocol) as srv:
        backend = make_backend(protocol, srv.url)
        try:
            start = time.monotonic()
            with pytest.raises(BackendTimeout):
                await backend.generate(prompt_req())
            with pytest.raises(BackendTimeout):
                await collect(backend, chat_req())
            assert time.monotonic() - start < 4
            assert await backend.health() is False
        finally:
            await backend.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_stream_idle_timeout(protocol: str) -> None:
    with serve_fake("slow", protocol, token_delay=1.5) as srv:
        backend = make_backend(protocol, srv.url, read_timeout_s=3.0, stream_idle_timeout_s=0.3)
        try:
            start = time.monotonic()
            with pytest.raises(BackendTimeout):
                await collect(backend, prompt_req())
            assert time.monotonic() - start < 1.5
        finally:
            await backend.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_down_is_connect_error(protocol: str) -> None:
    with serve_fake("down", protocol) as srv:
        backend = make_backend(protocol, srv.url)
        try:
            with pytest.raises(BackendConnectError):
                await backend.generate(prompt_req())
            with pytest.raises(BackendConnectError):
                await collect(backend, chat_req())
            assert await backend.health() is False
        finally:
            await backend.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_garbage_and_500(protocol: str) -> None:
    with serve_fake("garbage", protocol) as srv:
        backend = make_backend(protocol, srv.url)
        try:
            for req in (prompt_req(), chat_req()):
                with pytest.raises(BackendError, match="garbage"):
                    await backend.generate(req)
                with pytest.raises(BackendError, match="garbage"):
                    await collect(backend, req)
            srv.set_mode("error500")
            for req in (prompt_req(), chat_req()):
                with pytest.raises(BackendError) as info:
                    await backend.generate(req)
                assert not isinstance(info.value, BackendConnectError | BackendTimeout)
                with pytest.raises(BackendError):
                    await collect(backend, req)
            assert await backend.health() is False
        finally:
            await backend.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_input_too_long_is_input_error(protocol: str) -> None:
    with serve_fake("ok", protocol, max_input_chars=100) as srv:
        backend = make_backend(protocol, srv.url)
        try:
            with pytest.raises(BackendInputError, match="2048"):
                await backend.generate(prompt_req("x " * 200))
            with pytest.raises(BackendInputError):
                await collect(backend, chat_req("y " * 200))
        finally:
            await backend.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_closing_stream_closes_upstream_connection(protocol: str) -> None:
    with serve_fake("slow", protocol, token_delay=0.05) as srv:
        backend = make_backend(protocol, srv.url, stream_idle_timeout_s=2.0, read_timeout_s=2.0)
        try:
            gen = backend.stream(prompt_req(" ".join(f"w{i}" for i in range(200)), max_tokens=200))
            first = await anext(gen)
            assert first.text
            await gen.aclose()
            for _ in range(100):
                if srv.stats.disconnects >= 1 and srv.stats.active == 0:
                    break
                await asyncio.sleep(0.02)
            assert srv.stats.disconnects == 1
            assert srv.stats.active == 0
        finally:
            await backend.close()


# ---------------------------------------------------------------------------- SSE framing (OpenAI backend)
class _SplittingApp(FakeUpstreamApp):
    """The fake upstream, but every SSE body goes out in ``piece``-byte writes with a pause between them (so
    events and even CRLFs are split across TCP reads), with ``eol`` as the line ending."""

    def __init__(self, *, piece: int, eol: bytes) -> None:
        super().__init__("ok")
        self.piece = piece
        self.eol = eol

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        sse = False

        async def split_send(msg: dict) -> None:
            nonlocal sse
            if msg["type"] == "http.response.start":
                sse = dict(msg["headers"]).get(b"content-type") == b"text/event-stream"
            if msg["type"] != "http.response.body" or not sse:
                return await send(msg)
            body = msg.get("body", b"").replace(b"\n", self.eol)
            for i in range(0, len(body), self.piece):
                await send(
                    {"type": "http.response.body", "body": body[i : i + self.piece], "more_body": True}
                )
                await asyncio.sleep(0.002)
            await send({"type": "http.response.body", "body": b"", "more_body": msg.get("more_body", False)})

        await super().__call__(scope, receive, split_send)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
@pytest.mark.parametrize("piece", [5, 64])
async def test_openai_stream_events_split_across_reads(eol: bytes, piece: int) -> None:
    srv = FakeServer("ok", "openai")
    srv.app = _SplittingApp(piece=piece, eol=eol)
    with srv:
        backend = make_backend("openai", srv.url)
        try:
            for req, prompt_tokens in ((chat_req(), (2 + 4) + (3 + 4)), (prompt_req(), 3)):
                deltas = await collect(backend, req)
                assert "".join(d.text for d in deltas) == "Echo: hello there world"
                # four events, whole: one delta each, or fewer when several arrived in one read (joined in order)
                assert sum(d.pieces for d in deltas[:-1]) == 4 and all(d.text for d in deltas[:-1])
                last = deltas[-1]
                assert last.finish_reason == "stop"
                assert last.usage.prompt_tokens == prompt_tokens  # the upstream's usage (sent with [DONE])
                assert last.usage.completion_tokens == 4
            assert srv.stats.completed == 2 and srv.stats.disconnects == 0
        finally:
            await backend.close()


def test_sse_decoder_framing() -> None:
    events = [b'{"a": 1}', b'{"b": [2, 3]}', b"[DONE]"]
    wire = b": keep-alive\n\nevent: x\ndata: " + b"\n\ndata: ".join(events) + b"\n\n"
    for eol in (b"\n", b"\r\n", b"\r"):
        raw = wire.replace(b"\n", eol)
        for size in (1, 2, 3, 5, len(raw)):  # byte by byte, CRLF split, several events per read
            dec = _SSEDecoder()
            got = [e for i in range(0, len(raw), size) for e in dec.feed(raw[i : i + size])]
            assert got == events and dec.finish() == []
    dec = _SSEDecoder()
    assert dec.feed(b'data:{\ndata: "k": 1}\n') == []  # multi-line data: joined with LF at the blank line
    assert dec.feed(b'\ndata: {"tail": true}\ndata: {"trunc') == [b'{\n"k": 1}']
    assert dec.finish() == [b'{"tail": true}']  # no blank line at the end: still counts; a cut line does not



def test_sse_fast_framing_gives_what_the_general_decoder_gives() -> None:
    """``feed_simple`` (one ``data:`` line per event, joined without splitting events apart) against ``feed`` on
    random mixes of every framing (comments, other fields, multi-line and empty data, CRLF, [DONE] anywhere)
    split at random points: the same events in the same order, whichever path each read takes."""
    import random

    from gateway.inference.openai_upstream import _DONE, _NEXT_EVENT

    rng = random.Random(20261207)
    simple = [b'data: {"a": 1}\n\n', b'data: {"b": [2, "x y"]}\n\n']
    odd = [b": keep-alive\n\n", b"event: x\ndata: {}\n\n", b'data:{"c": 3}\n\n', b"data: \n\n",
           b"data: x\ndata: y\n\n", b"data: [DONE]\n\n", b'data: {"d": "\\n"}\r\n\r\n', b"\n\n"]
    fast_reads = 0
    for _ in range(5000):
        wire = b"".join(rng.choice(simple * 8 + odd) for _ in range(rng.randint(1, 10)))
        cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(0, 4))))
        reads = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        general, fast = _SSEDecoder(), _SSEDecoder()
        expected = [e for r in reads for e in general.feed(r)] + general.finish()
        got: list[bytes] = []
        for r in reads:
            taken = fast.feed_simple(r)
            if taken is None:
                got += fast.feed(r)
            else:
                fast_reads += 1
                joined, done = taken
                got += [*(joined.split(_NEXT_EVENT) if joined else ()), *((_DONE,) if done else ())]
        assert got + fast.finish() == expected, (wire, reads)
    assert fast_reads > 5000  # most reads took the fast path

async def test_a_spec_adapter_id_is_what_the_upstream_is_asked_for(tmp_path) -> None:
    """TGI: ``parameters.adapter_id`` on /generate(_stream), ``model`` on its Messages API (the alias's adapter;
    a caller cannot name one); OpenAI-compatible: the ``model`` field (vLLM / SGLang name a LoRA that way)."""
    from gateway.inference.factory import build_backends
    from gateway.models.spec import parse_spec
    from gateway.settings import Settings

    greedy = SamplingParams(max_tokens=3, temperature=0.0)
    for protocol in ("tgi", "openai"):
        with serve_fake("ok", protocol) as srv:
            spec = parse_spec({"alias": "a", "backend": protocol, "url": srv.url, "adapter_id": "acme/lora-b"})
            (backend,) = build_backends(spec, Settings(data_dir=tmp_path, database_url="sqlite:///x.db"))
            try:
                await backend.generate(GenerationRequest(request_id="r", prompt="hi", params=greedy))
                await backend.generate(GenerationRequest(request_id="r", messages=[{"role": "user", "content": "hi"}],
                                                         params=greedy))
                _ = [d async for d in backend.stream(GenerationRequest(request_id="r", prompt="hi", params=greedy))]
                assert srv.stats.adapters == ["acme/lora-b"] * 3, (protocol, srv.stats.adapters)
            finally:
                await backend.close()


_EV = 'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[%s]%s}\n\n'
_ODD_STREAMS = {
    "plain": [_EV % ('{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}', ""),
              *(_EV % ('{"index":0,"delta":{"content":"t' + str(i) + ' "},"logprobs":null,"finish_reason":null}', "")
                for i in range(5)),
              _EV % ('{"index":0,"delta":{},"finish_reason":"length"}',
                     ',"usage":{"prompt_tokens":"7","completion_tokens":5,"total_tokens":12}'),
              "data: [DONE]\n\n"],
    "usage apart": [_EV % ('{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}', ""),
                    _EV % ("", ',"usage":{"prompt_tokens":3,"completion_tokens":1}'), "data: [DONE]\n\n"],
    "error event": [_EV % ('{"index":0,"delta":{"content":"a"},"finish_reason":null}', ""),
                    'data: {"error":{"message":"boom","type":"server_error"}}\n\n'],
    "choices not a list": [_EV % ('{"index":0,"delta":{"content":"a"}}', ""), 'data: {"choices":"x"}\n\n'],
    "content a number": [_EV % ('{"index":0,"delta":{"content":"a"}}', ""), _EV % ('{"delta":{"content":5}}', "")],
    "delta a string": [_EV % ('{"delta":"odd","finish_reason":"stop"}', ""), "data: [DONE]\n\n"],
    "not an object": ["data: 123\n\n"],
    "no finish": [_EV % ('{"index":0,"delta":{"content":"a"}}', "")],
    "after done": [_EV % ('{"delta":{"content":"a"},"finish_reason":"stop"}', ""), "data: [DONE]\n\n",
                   _EV % ('{"delta":{"content":"late"}}', "")],
    "error with choices": [_EV % ('{"delta":{"content":"a"},"finish_reason":"stop"}', ',"error":"ignored"')],
    "completion text": ['data: {"choices":[{"text":"x","finish_reason":null}]}\n\n',
                        'data: {"choices":[{"text":"y","finish_reason":"stop"}]}\n\n'],
}


async def _raw_sse_server(events: list[str], split: bool) -> tuple[asyncio.AbstractServer, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for i, ev in enumerate(events):
            writer.write(ev.encode())
            if split and i % 2:
                await writer.drain()
                await asyncio.sleep(0.003)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


@pytest.mark.parametrize("name", sorted(_ODD_STREAMS))
async def test_batch_decoded_stream_events_give_what_the_per_event_path_gives(name: str, monkeypatch) -> None:
    """A read's events are decoded in one call; whatever that call does not accept goes event by event. Both
    must give the same deltas, or the same error, for every stream (whole in one read, or split over reads)."""
    import msgspec

    import gateway.inference.openai_upstream as ou

    async def outcome(split: bool) -> Any:
        server, url = await _raw_sse_server(_ODD_STREAMS[name], split)
        backend = make_backend("openai", url)
        req = prompt_req() if name == "completion text" else chat_req()
        try:
            deltas = await collect(backend, req)
            return [(d.text, d.pieces if d.text else 0, d.finish_reason, d.usage) for d in deltas]
        except Exception as exc:
            return (type(exc).__name__, str(exc))
        finally:
            await backend.close()
            server.close()
            await server.wait_closed()

    def refuse(raw: bytes) -> Any:
        raise msgspec.ValidationError("the per-event path only")

    for split in (False, True):
        batched = await outcome(split)
        with monkeypatch.context() as m:
            m.setattr(ou, "_decode_chunks", refuse)
            per_event = await outcome(split)
        joined = batched if isinstance(batched, tuple) else "".join(t for t, *_ in batched)
        expected = per_event if isinstance(per_event, tuple) else "".join(t for t, *_ in per_event)
        assert joined == expected, (name, split, batched, per_event)
        if not isinstance(batched, tuple):
            assert batched[-1] == per_event[-1]  # the same finish and usage
            assert sum(p for _, p, *_ in batched) == sum(p for _, p, *_ in per_event)


async def test_a_cookie_an_upstream_sets_is_never_sent_back(tmp_path) -> None:
    """One pooled session serves every principal: a cookie set while answering one caller must not ride along on
    the next caller's request (the fake sets one on every answer; addressed by name, as a default jar would keep
    it)."""
    from gateway.inference.factory import build_backends
    from gateway.models.spec import parse_spec
    from gateway.settings import Settings

    greedy = SamplingParams(max_tokens=3, temperature=0.0)
    for protocol in ("tgi", "openai"):
        with serve_fake("ok", protocol) as srv:
            url = srv.url.replace("127.0.0.1", "localhost")
            spec = parse_spec({"alias": "a", "backend": protocol, "url": url})
            (backend,) = build_backends(spec, Settings(data_dir=tmp_path, database_url="sqlite:///x.db"))
            try:
                for _ in range(2):
                    await backend.generate(GenerationRequest(request_id="r", prompt="hi", params=greedy))
                    _ = [d async for d in backend.stream(GenerationRequest(request_id="r", prompt="hi",
                                                                           params=greedy))]
                assert srv.stats.generations == 4 and srv.stats.cookies == [], (protocol, srv.stats.cookies)
            finally:
                await backend.close()
