"""The official `openai` SDK, sync and async, streaming and not, against a real gateway process (embedded mode)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.support.server import GatewayProcess, base_env, create_key


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, tiny_models_file):
    data = tmp_path_factory.mktemp("gw-embedded")
    env = base_env(data, PALISADE_MODELS_FILE=str(tiny_models_file), PALISADE_MAX_BODY_BYTES="65536",
                   PALISADE_LOG_LEVEL="info")
    key = create_key(env, "sdk-tests", "tiny")
    proc = GatewayProcess(env, data / "serve.log").start()
    yield proc, key, env
    proc.stop()


@pytest.fixture(scope="module")
def client(gateway):
    proc, key, _ = gateway
    return openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)


def test_chat_completion_sync(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8,
                                       temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_greedy_is_deterministic_and_stream_matches(client):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=12, temperature=0)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == a
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]


def test_completions_sync_and_stream(client):
    r = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 6
    chunks = list(client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_async_client_concurrent_and_streaming(gateway):
    proc, key, _ = gateway

    async def go():
        aclient = openai.AsyncOpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)
        msgs = [{"role": "user", "content": f"question {i}"} for i in range(4)]
        results = await asyncio.gather(*[
            aclient.chat.completions.create(model="tiny", messages=[m], max_tokens=5, temperature=0) for m in msgs
        ])
        stream = await aclient.chat.completions.create(model="tiny", messages=msgs[:1], max_tokens=5,
                                                       temperature=0, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await aclient.close()
        return results, text

    results, text = asyncio.run(go())
    assert all(r.usage.completion_tokens == 5 for r in results)
    assert text == results[0].choices[0].message.content


def test_models_lists_only_scoped_models(gateway, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    proc, _, env = gateway
    other = create_key(env, "scoped-elsewhere", "not-this-one")
    c2 = openai.OpenAI(base_url=proc.url + "/v1", api_key=other, max_retries=0)
    assert [m.id for m in c2.models.list()] == []
    with pytest.raises(openai.PermissionDeniedError) as exc:
        c2.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    body = exc.value.response.json()["error"]
    assert body["type"] == "permission_error" and body["decision_id"].startswith("dec_")
    assert "rule" not in body and "policy" not in body["message"].lower().replace("denied by policy", "")


def test_unauthenticated_and_bad_key(gateway):
    proc, _, _ = gateway
    for headers in ({}, {"Authorization": "Bearer pal_000000000000_" + "A" * 43}, {"Authorization": "Basic xyz"}):
        r = httpx.get(proc.url + "/v1/models", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["x-request-id"] == r.json()["error"]["request_id"]


def test_request_id_is_echoed(gateway):
    proc, key, _ = gateway
    r = httpx.get(proc.url + "/v1/models", headers={"Authorization": f"Bearer {key}", "X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.get(proc.url + "/v1/models", headers={"Authorization": f"Bearer {key}", "X-Request-ID": "bad id; drop"})
    assert r.headers["x-request-id"] != "bad id; drop" and len(r.headers["x-request-id"]) == 24


def test_revoked_key_is_refused_next_request(gateway):
    from tests.support.server import cli

    proc, _, env = gateway
    key = create_key(env, "to-revoke", "tiny")
    h = {"Authorization": f"Bearer {key}"}
    assert httpx.get(proc.url + "/v1/models", headers=h).status_code == 200
    cli(env, "keys", "revoke", key.split("_")[0] + "_" + key.split("_")[1])
    assert httpx.get(proc.url + "/v1/models", headers=h).status_code == 401


def test_health_ready_metrics_are_public(gateway, client):
    proc, _, _ = gateway
    assert httpx.get(proc.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(proc.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["backends"] == {"tiny": True}
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "m"}], max_tokens=3)
    text = httpx.get(proc.url + "/metrics").text
    assert 'palisade_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    assert 'palisade_tokens_total{direction="out",model="tiny"}' in text
    assert "palisade_http_request_duration_seconds_bucket" in text
    assert "palisade_queue_depth" in text


def test_openapi_lists_every_route_and_needs_a_principal(gateway):
    proc, key, _ = gateway
    assert httpx.get(proc.url + "/schema/openapi.json").status_code == 401
    spec = httpx.get(proc.url + "/schema/openapi.json", headers={"Authorization": f"Bearer {key}"}).json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/tgi/{model}", "/tgi/{model}/generate",
                 "/tgi/{model}/generate_stream", "/tgi/{model}/v1/chat/completions", "/healthz", "/readyz",
                 "/metrics"):
        assert path in spec["paths"], path


def test_no_secret_in_logs(gateway):
    proc, key, _ = gateway
    httpx.get(proc.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    httpx.get(proc.url + "/v1/models", headers={"Authorization": f"Bearer {key}x"})
    log = proc.log()
    assert "request_id" in log
    assert key not in log and key.split("_")[2] not in log


def test_every_log_line_is_json(gateway):
    import json

    proc, key, _ = gateway
    httpx.get(proc.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    lines = [line for line in proc.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        try:
            record = json.loads(line)  # uvicorn, casbin, the backends and our own loggers alike
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
        assert "level" in record and "timestamp" in record, line


def test_issuer_metadata_names_the_served_port(gateway):
    proc, _, _ = gateway
    meta = httpx.get(proc.url + "/.well-known/openid-configuration").json()
    assert meta["issuer"] == proc.url
    assert meta["token_endpoint"] == proc.url + "/oauth/token"
