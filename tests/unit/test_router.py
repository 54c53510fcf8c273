"""Router (pools, retry, breaker, health, caps, errors) and the models-file factory, over fake upstreams."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from gateway.errors import BadRequest, NotFound, ServiceUnavailable, UpstreamError, UpstreamTimeout
from gateway.inference.base import GenerationRequest, SamplingParams
from gateway.inference.factory import build_backends
from gateway.inference.openai_upstream import OpenAIBackend
from gateway.inference.router import Router
from gateway.inference.tgi import TGIBackend
from gateway.metrics import REGISTRY
from gateway.models.spec import ModelsFileError, ModelSpec, default_specs, load_models_file
from gateway.settings import Settings
from tests.support.fake_upstreams import serve_fake

TIMEOUTS = {"connect_timeout_s": 0.5, "read_timeout_s": 0.5, "stream_idle_timeout_s": 0.5}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'x.db'}",
        connect_timeout_s=0.5,
        read_timeout_s=0.5,
        stream_idle_timeout_s=0.5,
        health_interval_s=60.0,
        breaker_failures=2,
        breaker_reset_s=0.3,
    )


def backend(protocol: str, url: str, name: str, **kw):
    opts = {**TIMEOUTS, **kw}
    if protocol == "tgi":
        return TGIBackend(url, name=name, **opts)
    return OpenAIBackend(url, name=name, upstream_model="fake-model", **opts)


def req(text: str = "hello there world", max_tokens: int = 16, chat: bool = False) -> GenerationRequest:
    if chat:
        return GenerationRequest(
            request_id="r",
            params=SamplingParams(max_tokens=max_tokens),
            messages=[{"role": "user", "content": text}],
        )
    return GenerationRequest(request_id="r", prompt=text, params=SamplingParams(max_tokens=max_tokens))


async def collect(router: Router, alias: str, request: GenerationRequest) -> list:
    out = []
    async for d in router.stream(alias, request):
        out.append(d)
    return out


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("protocol", ["tgi", "openai"])
async def test_generate_stream_and_status(settings: Settings, protocol: str) -> None:
    with serve_fake("ok", protocol) as a, serve_fake("ok", protocol) as b:
        router = Router(settings)
        router.set_route(
            "m", [backend(protocol, a.url, "a"), backend(protocol, b.url, "b")], max_concurrency=4
        )
        await router.start()
        try:
            assert router.aliases() == ["m"] and router.has("m") and not router.has("x")
            assert router.ready()
            result = await router.generate("m", req())
            assert result.text == "Echo: hello there world"
            deltas = await collect(router, "m", req(chat=True))
            assert "".join(d.text for d in deltas) == "Echo: hello there world"
            assert deltas[-1].finish_reason == "stop" and deltas[-1].usage.completion_tokens == 4
            status = router.status()["m"]
            assert [s["endpoint"] for s in status] == ["a", "b"]
            assert all(s["healthy"] and s["breaker"] == "closed" and s["inflight"] == 0 for s in status)
            assert router.count_prompt_tokens("m", req()) >= 1
            assert router.context_length("m") is None
            # least busy: concurrent requests spread over both endpoints
            a.set_mode("slow")
            b.set_mode("slow")
            await asyncio.gather(*(router.generate("m", req()) for _ in range(4)))
            assert a.stats.max_active >= 1 and b.stats.max_active >= 1
        finally:
            await router.close()


async def test_unknown_alias(settings: Settings) -> None:
    router = Router(settings)
    with pytest.raises(NotFound, match="model 'nope' does not exist"):
        await router.generate("nope", req())
    with pytest.raises(NotFound):
        await collect(router, "nope", req())
    with pytest.raises(NotFound):
        router.context_length("nope")


@pytest.mark.parametrize("protocol", ["tgi", "openai"])
async def test_down_endpoint_retried_on_healthy_one(settings: Settings, protocol: str) -> None:
    with serve_fake("down", protocol) as down, serve_fake("ok", protocol) as ok:
        router = Router(settings)
        router.set_route("m", [backend(protocol, down.url, "down"), backend(protocol, ok.url, "up")])
        before = metric("palisade_backend_errors_total", model="m", endpoint="down", kind="connect")
        try:
            assert (await router.generate("m", req())).text == "Echo: hello there world"
            deltas = await collect(router, "m", req(chat=True))
            assert "".join(d.text for d in deltas) == "Echo: hello there world"
            assert (
                metric("palisade_backend_errors_total", model="m", endpoint="down", kind="connect")
                == before + 2
            )
            # two connect failures opened the down endpoint's breaker: now it is skipped outright
            assert router.status()["m"][0]["breaker"] == "open"
            assert (await router.generate("m", req())).text
        finally:
            await router.close()


async def test_all_down_is_service_unavailable(settings: Settings) -> None:
    with serve_fake("down", "openai") as d1, serve_fake("down", "openai") as d2:
        router = Router(settings)
        router.set_route("m", [backend("openai", d1.url, "d1"), backend("openai", d2.url, "d2")])
        try:
            with pytest.raises(ServiceUnavailable, match="no healthy endpoint for model 'm'") as info:
                await router.generate("m", req())
            assert int(info.value.headers["Retry-After"]) >= 1
            await router.start()  # health check marks both unhealthy
            assert not router.ready()
            assert [s["healthy"] for s in router.status()["m"]] == [False, False]
            assert metric("palisade_backend_healthy", model="m", endpoint="d1") == 0
            with pytest.raises(ServiceUnavailable) as info:
                await collect(router, "m", req())
            assert "Retry-After" in info.value.headers
        finally:
            await router.close()


async def test_health_checks_mark_endpoints(settings: Settings) -> None:
    with serve_fake("error500", "tgi") as srv:
        router = Router(dataclasses.replace(settings, health_interval_s=0.1))
        router.set_route("m", [backend("tgi", srv.url, "t")])
        await router.start()
        try:
            assert not router.ready()
            with pytest.raises(ServiceUnavailable):
                await router.generate("m", req())
            srv.set_mode("ok")
            for _ in range(50):
                if router.ready():
                    break
                await asyncio.sleep(0.05)
            assert router.ready()
            assert metric("palisade_backend_healthy", model="m", endpoint="t") == 1
            assert (await router.generate("m", req())).text
        finally:
            await router.close()


@pytest.mark.parametrize("protocol", ["tgi", "openai"])
async def test_die_mid_stream_is_upstream_error_after_deltas(settings: Settings, protocol: str) -> None:
    with serve_fake("die_mid_stream", protocol) as srv:
        router = Router(settings)
        router.set_route("m", [backend(protocol, srv.url, "x")])
        try:
            got = []
            start = time.monotonic()
            with pytest.raises(UpstreamError) as info:
                async for d in router.stream("m", req("a b c d e f")):
                    got.append(d.text)
            # the two tokens sent before the drop, as they arrived (events that come together leave as one delta)
            assert "".join(got) == "Echo: a " and got[0].startswith("Echo")
            assert info.value.status_code == 502 and "Echo" not in info.value.message
            assert time.monotonic() - start < 2
            assert router.status()["m"][0]["inflight"] == 0
        finally:
            await router.close()


@pytest.mark.parametrize("protocol", ["tgi", "openai"])
async def test_hang_is_upstream_timeout(settings: Settings, protocol: str) -> None:
    with serve_fake("hang", protocol) as srv:
        router = Router(settings)
        router.set_route("m", [backend(protocol, srv.url, "h")])
        try:
            start = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await router.generate("m", req())
            with pytest.raises(UpstreamTimeout):
                await collect(router, "m", req(chat=True))
            assert time.monotonic() - start < 4
        finally:
            await router.close()


async def test_garbage_is_upstream_error_without_internals(settings: Settings) -> None:
    with serve_fake("garbage", "openai") as srv:
        router = Router(settings)
        router.set_route("m", [backend("openai", srv.url, "g")])
        try:
            with pytest.raises(UpstreamError) as info:
                await router.generate("m", req())
            assert info.value.message == "the inference server for model 'm' failed"
            assert metric("palisade_backend_errors_total", model="m", endpoint="g", kind="error") >= 1
        finally:
            await router.close()


async def test_input_error_is_bad_request(settings: Settings) -> None:
    with serve_fake("ok", "tgi", max_input_chars=50) as srv:
        router = Router(settings)
        router.set_route("m", [backend("tgi", srv.url, "t")])
        try:
            with pytest.raises(BadRequest, match="must be <= 2048"):
                await router.generate("m", req("z " * 100))
            assert router.status()["m"][0]["breaker"] == "closed"
        finally:
            await router.close()


async def test_breaker_opens_then_half_opens(settings: Settings) -> None:
    with serve_fake("error500", "openai") as srv:
        router = Router(settings)  # breaker: 2 failures, 0.3 s
        router.set_route("m", [backend("openai", srv.url, "e")])
        try:
            for _ in range(2):
                with pytest.raises(UpstreamError):
                    await router.generate("m", req())
            assert router.status()["m"][0]["breaker"] == "open"
            sent = srv.stats.requests
            with pytest.raises(ServiceUnavailable) as info:
                await router.generate("m", req())
            assert info.value.headers["Retry-After"] == "1"
            assert srv.stats.requests == sent  # nothing sent while open

            await asyncio.sleep(0.35)
            assert router.status()["m"][0]["breaker"] == "half_open"
            with pytest.raises(UpstreamError):  # the trial fails: open again
                await router.generate("m", req())
            assert router.status()["m"][0]["breaker"] == "open"

            await asyncio.sleep(0.35)
            srv.set_mode("slow")
            srv.app.token_delay = 0.05
            # half-open lets exactly one trial through; a second request meanwhile gets 503
            trial = asyncio.create_task(router.generate("m", req()))
            await asyncio.sleep(0.02)
            with pytest.raises(ServiceUnavailable):
                await router.generate("m", req())
            assert (await trial).text
            assert router.status()["m"][0]["breaker"] == "closed"
        finally:
            await router.close()


async def test_concurrency_cap_queues_then_503(settings: Settings) -> None:
    with serve_fake("slow", "openai", token_delay=0.1) as srv:
        router = Router(settings, queue_timeout_s=2.0)
        router.set_route("m", [backend("openai", srv.url, "s", read_timeout_s=3.0)], max_concurrency=1)
        try:
            tasks = [asyncio.create_task(router.generate("m", req("a", max_tokens=3))) for _ in range(3)]
            await asyncio.sleep(0.05)
            assert metric("palisade_queue_depth", model="m") == 2
            results = await asyncio.gather(*tasks)
            assert all(r.text == "Echo: a" for r in results)
            assert srv.stats.max_active == 1
            assert metric("palisade_queue_depth", model="m") == 0

            router.queue_timeout_s = 0.1
            first = asyncio.create_task(router.generate("m", req("a", max_tokens=3)))
            await asyncio.sleep(0.02)
            with pytest.raises(ServiceUnavailable, match="capacity") as info:
                await router.generate("m", req())
            assert info.value.headers["Retry-After"] == "1"
            assert (await first).text
        finally:
            await router.close()


@pytest.mark.parametrize("protocol", ["tgi", "openai"])
async def test_closing_stream_early_closes_upstream(settings: Settings, protocol: str) -> None:
    with serve_fake("slow", protocol, token_delay=0.05) as srv:
        router = Router(settings)
        router.set_route("m", [backend(protocol, srv.url, "s", stream_idle_timeout_s=2.0)])
        try:
            gen = router.stream("m", req(" ".join(f"w{i}" for i in range(200)), max_tokens=200))
            assert (await anext(gen)).text
            assert router.status()["m"][0]["inflight"] == 1
            await gen.aclose()
            assert router.status()["m"][0]["inflight"] == 0
            assert router.status()["m"][0]["breaker"] == "closed"
            for _ in range(100):
                if srv.stats.disconnects == 1 and srv.stats.active == 0:
                    break
                await asyncio.sleep(0.02)
            assert srv.stats.disconnects == 1 and srv.stats.active == 0
        finally:
            await router.close()


async def test_hot_swap_lets_inflight_finish(settings: Settings) -> None:
    with serve_fake("slow", "openai", token_delay=0.05) as old, serve_fake("ok", "openai") as new:
        router = Router(settings)
        old_backend = backend("openai", old.url, "old", read_timeout_s=3.0)
        router.set_route("m", [old_backend])
        try:
            running = asyncio.create_task(router.generate("m", req("one two three four")))
            await asyncio.sleep(0.05)
            router.set_route("m", [backend("openai", new.url, "new")])
            assert (await router.generate("m", req())).text  # served by the new pool at once
            assert new.stats.requests == 1
            assert (await running).text == "Echo: one two three four"
            for _ in range(50):
                if not old_backend.http.open:
                    break
                await asyncio.sleep(0.02)
            assert not old_backend.http.open  # drained, then closed
            router.remove_route("m")
            assert not router.has("m")
        finally:
            await router.close()


# ---------------------------------------------------------------------------- factory
def test_load_models_file(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - {alias: mock-gpt, backend: openai, url: 'http://127.0.0.1:18080/v1', upstream_model: gpt-x,"
        " api_key_env: UP_KEY, max_concurrency: 8}\n"
        "  - {alias: big, backend: tgi, urls: ['http://a:80', 'http://b:80']}\n"
    )
    entries = load_models_file(path)
    assert [e.alias for e in entries] == ["mock-gpt", "big"]
    monkeypatch.setenv("UP_KEY", "k-123")
    (o,) = build_backends(entries[0], settings)
    assert isinstance(o, OpenAIBackend) and o.upstream_model == "gpt-x"
    assert o.http.headers["Authorization"] == "Bearer k-123"
    tgis = build_backends(entries[1], settings)
    assert [type(b) for b in tgis] == [TGIBackend, TGIBackend] and [b.name for b in tgis] == [
        "big/0",
        "big/1",
    ]
    monkeypatch.delenv("UP_KEY")
    with pytest.raises(ModelsFileError, match="UP_KEY"):
        build_backends(entries[0], settings)
    assert default_specs(settings.embedded_model, settings.embedded_gguf_file) == [
        ModelSpec(alias="chat", backend="embedded", model="builtin:smollm2", gguf_file=None)
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("models:\n  - {backend: tgi, url: 'http://a'}\n", "missing 'alias'"),
        ("models:\n  - {alias: x, backend: llama}\n", "unknown backend"),
        ("models:\n  - {alias: x, backend: openai}\n", "missing 'url'"),
        ("models:\n  - {alias: x, backend: openai, url: 'ftp://a'}\n", "http"),
        ("models:\n  - {alias: x, backend: openai, url: 'http://a', api_key: s}\n", "unknown keys"),
        (
            "models:\n  - {alias: x, backend: tgi, url: 'http://a'}\n  - {alias: x, backend: tgi, url: 'http://b'}\n",
            "twice",
        ),
        ("models: {}\n", "'models' list"),
        ("models: [\n", "not valid YAML"),
    ],
)
def test_models_file_errors(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ModelsFileError, match=error):
        load_models_file(path)
