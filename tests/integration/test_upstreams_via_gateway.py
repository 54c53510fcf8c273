"""OpenAI-compatible (vLLM/SGLang) and TGI upstreams behind the gateway, against small real fake servers."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from text_generation import Client

from tests.support.fake_upstreams import serve_fake
from tests.support.server import GatewayProcess, base_env, create_key


@pytest.fixture(scope="module")
def upstreams():
    with (
        serve_fake("ok", "openai", token_delay=0.0) as oa1,
        serve_fake("down", "openai") as oa_down,
        serve_fake("ok", "tgi", token_delay=0.0) as tgi,
        serve_fake("die_mid_stream", "openai") as dying,
        serve_fake("hang", "openai") as hanging,
        serve_fake("slow", "openai", token_delay=0.05) as trickle,
    ):
        yield {"oa": oa1, "down": oa_down, "tgi": tgi, "dying": dying, "hanging": hanging, "trickle": trickle}


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstreams):
    data = tmp_path_factory.mktemp("gw-upstreams")
    models = data / "models.yaml"
    models.write_text(f"""
models:
  - alias: mock-gpt
    backend: openai
    urls: ["{upstreams["down"].url}", "{upstreams["oa"].url}"]
    upstream_model: gpt-x
  - alias: big
    backend: tgi
    url: {upstreams["tgi"].url}
  - alias: flaky
    backend: openai
    url: {upstreams["dying"].url}
    upstream_model: gpt-x
  - alias: slow
    backend: openai
    url: {upstreams["hanging"].url}
    upstream_model: gpt-x
  - alias: trickle
    backend: openai
    url: {upstreams["trickle"].url}
    upstream_model: gpt-x
""")
    env = base_env(
        data,
        PALISADE_MODELS_FILE=str(models),
        PALISADE_READ_TIMEOUT_S="1",
        PALISADE_STREAM_IDLE_TIMEOUT_S="1",
        PALISADE_CONNECT_TIMEOUT_S="1",
        PALISADE_HEALTH_INTERVAL_S="60",
    )
    key = create_key(env, "upstream-tests")
    proc = GatewayProcess(env, data / "serve.log").start(ready=False)
    yield proc, key
    proc.stop()


def test_openai_upstream_with_one_endpoint_down(gw, upstreams):
    proc, key = gw
    client = openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)
    for _ in range(3):  # whichever endpoint is picked, the request succeeds (retry on connect failure)
        r = client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "ping"}], max_tokens=5
        )
        assert r.choices[0].message.content
    assert upstreams["oa"].stats.last_body["model"] == "gpt-x"  # the alias maps to the upstream's model name
    chunks = list(
        client.chat.completions.create(
            model="mock-gpt",
            messages=[{"role": "user", "content": "ping"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_tgi_upstream_through_gateway(gw):
    proc, key = gw
    client = Client(base_url=f"{proc.url}/tgi/big", headers={"Authorization": f"Bearer {key}"})
    r = client.generate("hello world", max_new_tokens=4)
    assert r.generated_text and r.details.generated_tokens > 0
    streamed = "".join(t.token.text for t in client.generate_stream("hello world", max_new_tokens=4))
    assert streamed == r.generated_text
    oa = openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)
    assert (
        oa.chat.completions.create(model="big", messages=[{"role": "user", "content": "x"}], max_tokens=3)
        .choices[0]
        .message.content
    )


def test_upstream_dying_mid_stream_gives_clean_error_event(gw):
    proc, key = gw
    client = openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)
    got = []
    with pytest.raises(openai.APIError) as exc:
        for c in client.chat.completions.create(
            model="flaky",
            messages=[{"role": "user", "content": "tell me a long story about dragons"}],
            max_tokens=20,
            stream=True,
        ):
            got.append(c)
    assert got, "tokens before the upstream died reach the client"
    assert "inference server" in str(exc.value).lower()
    # non-streaming: a 502 in the JSON shape
    r = httpx.post(
        proc.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "flaky", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20},
    )
    assert r.status_code in (502, 503) and r.json()["error"]["request_id"]


def test_hanging_upstream_times_out_without_stuck_connection(gw):
    proc, key = gw
    t0 = time.monotonic()
    r = httpx.post(
        proc.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
        timeout=30,
    )
    assert time.monotonic() - t0 < 10
    assert r.status_code in (503, 504), r.text
    assert r.json()["error"]["type"] in ("timeout_error", "service_unavailable")
    assert proc.alive()


def test_client_disconnect_cancels_the_upstream_generation(gw, upstreams):
    proc, key = gw
    trickle = upstreams["trickle"]
    before = trickle.stats.disconnects
    body = {"model": "trickle", "messages": [{"role": "user", "content": "word " * 100}], "max_tokens": 100,
            "stream": True}
    with httpx.Client(timeout=30) as c, c.stream("POST", proc.url + "/v1/chat/completions", json=body,
                                                 headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        assert next(r.iter_lines()).startswith("data: ")
    # the gateway noticed the client leave and closed its upstream stream long before 100 tokens (5 s) were sent
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and trickle.stats.disconnects == before:
        time.sleep(0.05)
    assert trickle.stats.disconnects == before + 1
