"""OpenAI-compatible (vLLM/SGLang) and TGI upstreams behind the gateway, against small real fake servers."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from text_generation import Client

from tests.support.fake_upstreams import serve_fake
from tests.support.server import GatewayProcess, base_env, create_key
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def upstreams():
    with (
        serve_fake("ok", "openai", token_delay=0.0) as oa1,
        serve_fake("down", "openai") as oa_down,
        serve_fake("ok", "tgi", token_delay=0.0) as tgi,
        serve_fake("die_mid_stream", "openai") as dying,
        serve_fake("hang", "openai") as hanging,
        serve_fake("slow", "openai", token_delay=0.05) as trickle,
        serve_fake("ok", "openai") as held,
    ):
        yield {"oa": oa1, "down": oa_down, "tgi": tgi, "dying": dying, "hanging": hanging, "trickle": trickle,
               "held": held}


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
  - alias: held
    backend: openai
    url: {upstreams["held"].url}
    upstream_model: gpt-x
""")
    env = base_env(
        data,
        PALISADE_MODELS_FILE=str(models),
        PALISADE_READ_TIMEOUT_S="1",
        PALISADE_STREAM_IDLE_TIMEOUT_S="1",
        PALISADE_CONNECT_TIMEOUT_S="1",
        PALISADE_HEALTH_INTERVAL_S="2",
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
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "upstream_error" and r.json()["error"]["request_id"]


def healthy(url: str, alias: str) -> float | None:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("palisade_backend_healthy{") and f'model="{alias}"' in line:
            return float(line.split()[-1])
    return None


def test_upstream_failing_its_health_check_gives_503_at_once(gw):
    proc, key = gw
    # the hanging upstream never answers its health check either: once the check has said so, no request waits
    wait_until(lambda: healthy(proc.url, "slow") == 0.0, timeout=20, what="the health check to mark 'slow' down")
    t0 = time.monotonic()
    r = httpx.post(
        proc.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
        timeout=30,
    )
    assert time.monotonic() - t0 < 5
    assert r.status_code == 503, r.text
    assert r.json()["error"] == {**r.json()["error"], "type": "service_unavailable",
                                 "message": "no healthy endpoint for model 'slow'"}
    assert "Retry-After" in r.headers
    assert proc.alive()


def test_healthy_upstream_that_never_answers_times_out_with_504(gw, upstreams):
    proc, key = gw
    held = upstreams["held"]
    held.hold()  # health checks pass, generations wait forever
    try:
        t0 = time.monotonic()
        r = httpx.post(
            proc.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "held", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
            timeout=30,
        )
        assert time.monotonic() - t0 < 10
        # streaming: the first token never came, so the answer is an HTTP error too, not a 200 whose body is an
        # error event (the stream's headers wait for its first token, which waits for the start record's commit)
        streamed = httpx.post(
            proc.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "held", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": True},
            timeout=30,
        )
    finally:
        held.release()
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout_error"
    assert streamed.status_code == 504 and streamed.headers["content-type"].startswith("application/json"), \
        streamed.text
    assert streamed.json()["error"]["type"] == "timeout_error"
    assert held.stats.generations >= 2
    wait_until(lambda: held.stats.held == 0, timeout=10, what="the gateway to close the held upstream request")
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
    wait_until(lambda: trickle.stats.disconnects == before + 1, timeout=3, what="the upstream to see the cancel")


def test_upstream_killed_mid_stream_ends_cleanly_settles_and_is_audited(gw, upstreams):
    """Fault drill: the upstream drops the connection after two tokens. The client gets those tokens, then one
    error event in the error shape (no [DONE]); the reservation is settled (no concurrency slot held); the audit
    record says the request failed with 502 and counts the two tokens that were sent."""
    import json
    import sqlite3

    from tests.support.server import cli

    proc, key = gw
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "flaky", "messages": [{"role": "user", "content": "tell me a long story about dragons"}],
            "max_tokens": 20, "stream": True}
    with httpx.Client(timeout=30) as c, c.stream("POST", proc.url + "/v1/chat/completions", json=body,
                                                 headers=headers) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    *tokens, last = [json.loads(e) for e in events]
    # the two tokens sent before the upstream died (one SSE event each, or one when they arrived together)
    assert 1 <= len(tokens) <= 2 and all(t["choices"][0]["delta"]["content"] for t in tokens)
    assert "".join(t["choices"][0]["delta"]["content"] for t in tokens).count(" ") == 2
    assert last == {"error": {**last["error"], "type": "upstream_error", "request_id": request_id}}, last

    rows = [json.loads(line) for line in cli(proc.env, "keys", "list").stdout.splitlines() if line.startswith("{")]
    pid = "key:" + next(r["id"] for r in rows if key.startswith(r["prefix"] + "_"))
    usage = httpx.get(f"{proc.url}/v1/limits/{pid}", params={"model": "flaky"}, headers=headers, timeout=10).json()
    assert [s["used"]["concurrent"] for s in usage["scopes"]] == [0] * len(usage["scopes"])

    db = sqlite3.connect(f"{proc.env['PALISADE_DATA_DIR']}/palisade.db")
    try:
        found = wait_until(lambda: db.execute("SELECT tag, details FROM audit_records WHERE request_id = ? "
                                              "ORDER BY seq", (request_id,)).fetchall(),
                           timeout=5, what="the stream's audit records")
    finally:
        db.close()
    tags = [t for t, _ in found]
    assert tags == ["inference:stream:start", "inference:request:failed"], tags
    details = json.loads(found[-1][1])
    assert details["status"] == "error:502" and details["completion_tokens"] == 2, details


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_a_request_whose_client_left_before_the_answer_is_cancelled_upstream(gw, upstreams, stream):
    """The client sends a request and hangs up while the upstream still works on it (before a stream's first
    token, whose first byte the gateway holds until then; before a whole answer). The gateway notices without
    waiting for the upstream: it closes the upstream request while the upstream still holds it (a stream at once,
    a non-streaming answer once it has taken WATCH_AFTER_S), writes the completion record "cancelled" next to the
    accepted record, and settles the reservation. Without this a client that gives up keeps a model's slot busy
    decoding for nobody until the request timeout."""
    import json
    import socket
    import sqlite3

    from tests.support.server import cli

    proc, key = gw
    held = upstreams["held"]
    rid = f"left-early-{time.time_ns()}"
    body = json.dumps({"model": "held", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
                       "stream": stream}).encode()
    host, port = proc.url.removeprefix("http://").split(":")
    held.hold()
    try:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                      + f"Authorization: Bearer {key}\r\nX-Request-Id: {rid}\r\n".encode()
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            wait_until(lambda: held.stats.held == 1, timeout=10, what="the request to reach the upstream")
        # the client is gone; the upstream still holds the request and would never answer on its own (the
        # gateway's request timeout in this fixture is far longer than this wait)
        wait_until(lambda: held.stats.held == 0, timeout=10, what="the gateway to close the upstream request")
    finally:
        held.release()

    db = sqlite3.connect(f"{proc.env['PALISADE_DATA_DIR']}/palisade.db")
    try:
        found = wait_until(lambda: (rows := db.execute("SELECT tag, details FROM audit_records WHERE request_id = ? "
                                                       "ORDER BY seq", (rid,)).fetchall()) and len(rows) == 2
                           and rows, timeout=10, what="the stream's completion record")
    finally:
        db.close()
    accepted = "inference:stream:start" if stream else "inference:request:accepted"
    assert [t for t, _ in found] == [accepted, "inference:request:failed"], found
    assert json.loads(found[1][1])["status"] == "cancelled"
    rows = [json.loads(line) for line in cli(proc.env, "keys", "list").stdout.splitlines() if line.startswith("{")]
    pid = "key:" + next(r["id"] for r in rows if key.startswith(r["prefix"] + "_"))
    headers = {"Authorization": f"Bearer {key}"}
    usage = httpx.get(f"{proc.url}/v1/limits/{pid}", params={"model": "held"}, headers=headers, timeout=10).json()
    assert [s["used"]["concurrent"] for s in usage["scopes"]] == [0] * len(usage["scopes"])
    assert proc.alive()
