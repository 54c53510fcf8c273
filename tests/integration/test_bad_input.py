"""Bad input gets a clear 4xx in the JSON error shape, never a 500, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.support.server import GatewayProcess, base_env, create_key

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory, tiny_models_file):
    data = tmp_path_factory.mktemp("gw-bad-input")
    env = base_env(data, PALISADE_MODELS_FILE=str(tiny_models_file), PALISADE_MAX_BODY_BYTES="65536")
    key = create_key(env, "bad-input", "tiny")
    proc = GatewayProcess(env, data / "serve.log").start()
    with httpx.Client(base_url=proc.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        yield proc, c
    proc.stop()


CASES = [
    ("malformed json", CHAT, b'{"model": "tiny", "messages": [', 400, "json"),
    ("not an object", CHAT, b'[1, 2, 3]', 400, "object"),
    ("wrong type", CHAT, {"model": "tiny", "messages": "hello"}, 400, "messages"),
    ("missing messages", CHAT, {"model": "tiny"}, 400, "messages"),
    ("empty messages", CHAT, {"model": "tiny", "messages": []}, 400, "length >= 1"),
    ("bad role", CHAT, {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("unknown model", CHAT, {"model": "nope", "messages": MSG}, 404, "model 'nope' does not exist"),
    ("max_tokens zero", CHAT, {"model": "tiny", "messages": MSG, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens negative", CHAT, {"model": "tiny", "messages": MSG, "max_tokens": -5}, 400, "max_tokens"),
    ("max_tokens beyond context", CHAT, {"model": "tiny", "messages": MSG, "max_tokens": 4000}, 400, "context"),
    ("max_tokens over cap", CHAT, {"model": "tiny", "messages": MSG, "max_tokens": 10**6}, 400, "at most"),
    ("prompt longer than context", CHAT,
     {"model": "tiny", "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "context"),
    ("temperature out of range", CHAT, {"model": "tiny", "messages": MSG, "temperature": 7}, 400, "temperature"),
    ("unsupported n", CHAT, {"model": "tiny", "messages": MSG, "n": 3}, 400, "n=1"),
    ("unsupported tools", CHAT, {"model": "tiny", "messages": MSG, "tools": [{"type": "function"}]}, 400, "tools"),
    ("null user content", CHAT, {"model": "tiny", "messages": [{"role": "user", "content": None}]}, 400,
     "messages[0].content"),
    ("unknown field", CHAT, {"model": "tiny", "messages": MSG, "frobnicate": 1}, 400, "frobnicate"),
    ("too many stops", CHAT, {"model": "tiny", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("unicode edge cases", CHAT,
     {"model": "tiny", "messages": [{"role": "user", "content": "\u0000\ud7ff\ufeff😀 \u202e"}], "max_tokens": 2},
     200, None),
    ("lone surrogate", CHAT, b'{"model":"tiny","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":2}',
     400, "not valid JSON"),
    ("completions prompt list too long", "/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt"),
    ("tgi missing inputs", "/tgi/tiny/generate", {"parameters": {}}, 400, "inputs"),
    ("tgi unsupported top_k", "/tgi/tiny/generate", {"inputs": "x", "parameters": {"top_k": 5}}, 400, "top_k"),
    ("tgi caller-chosen adapter", "/tgi/tiny/generate", {"inputs": "x", "parameters": {"adapter_id": "any-lora"}},
     400, "adapter_id"),
    ("tgi unknown model", "/tgi/nope/generate", {"inputs": "x"}, 404, "nope"),
]


@pytest.mark.parametrize(("name", "path", "body", "status", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(gw, name, path, body, status, needle):
    _, c = gw
    r = c.post(path, content=body) if isinstance(body, bytes) else c.post(path, json=body)
    assert r.status_code == status, r.text
    if status >= 400:
        err = r.json()["error"]
        assert set(err) >= {"type", "message", "request_id"}
        assert needle.lower() in err["message"].lower(), err["message"]
        assert "Traceback" not in r.text


def test_body_over_cap_is_413(gw):
    _, c = gw
    r = c.post(CHAT, json={"model": "tiny", "messages": [{"role": "user", "content": "x" * 100_000}]})
    assert r.status_code == 413
    assert r.json()["error"]["message"] == "request body is too large"


def test_wrong_method_and_unknown_route(gw):
    _, c = gw
    assert c.get(CHAT).status_code == 405
    r = c.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_server_keeps_serving_after_bad_input(gw):
    proc, c = gw
    for _, path, body, _, _ in CASES:
        c.post(path, content=body) if isinstance(body, bytes) else c.post(path, json=body)
    assert proc.alive()
    r = c.post(CHAT, json={"model": "tiny", "messages": MSG, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert "Traceback" not in proc.log()
