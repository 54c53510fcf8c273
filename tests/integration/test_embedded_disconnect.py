"""A client that leaves mid-stream stops the EMBEDDED model's generation (real HTTP through the real app).

The gateway runs in this process under uvicorn (real sockets), so the test can look at the embedded backend's
own sequence: the tiny model is altered never to end on its own (tests/support/tiny_model.py
``make_endless_tiny_model``), so a generation only stops early if it is cancelled. The client reads a few events
of a ``max_tokens`` 4,000 stream and disconnects; the backend's sequence must leave the batch having generated a
handful of tokens, not 4,000, and the next request is served. No timing assumption: on a slow or a fast machine
a broken cancellation shows as ``n_generated == max_new``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from unittest import mock

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from tests.support.server import base_env, cli, create_key, free_port
from tests.support.tiny_model import make_endless_tiny_model
from tests.support.waiting import wait_until

MAX_TOKENS = 4_000


class InProcessGateway:
    """The real app under uvicorn in a thread: real HTTP (streaming, disconnects), objects inspectable."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessGateway:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=180, what="the in-process gateway to start")
        # embedded models load in the background: ready once /readyz says so
        wait_until(lambda: httpx.get(self.url + "/readyz", timeout=10).status_code == 200, timeout=180,
                   what="the embedded model to load")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessGateway, str]]:
    tmp = tmp_path_factory.mktemp("embedded-cancel")
    model = make_endless_tiny_model(tmp / "endless", context=MAX_TOKENS + 96)
    models = tmp / "models.yaml"
    models.write_text(f"models:\n  - alias: endless\n    backend: embedded\n    model: {model}\n    max_batch: 1\n")
    env = base_env(tmp / "data", PALISADE_MODELS_FILE=str(models), PALISADE_MAX_TOKENS_CAP=str(MAX_TOKENS))
    cli(env, "migrate")
    key = create_key(env, "cancel-test", "endless")
    with mock.patch.dict(os.environ, env, clear=True):
        settings = Settings.from_env()
    with InProcessGateway(settings) as gw:
        yield gw, key


def backend_of(gw: InProcessGateway):
    from tests.integration.test_identity_helpers import services_of

    return services_of(gw.app).router._pools["endless"].endpoints[0].backend


def test_client_disconnect_stops_the_embedded_generation(gateway) -> None:
    gw, key = gateway
    backend = backend_of(gw)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "endless", "messages": [{"role": "user", "content": "go on"}], "max_tokens": MAX_TOKENS,
            "temperature": 0, "stream": True}
    with httpx.Client(timeout=120) as c, c.stream("POST", gw.url + "/v1/chat/completions", json=body,
                                                  headers=headers) as r:
        assert r.status_code == 200
        events = (line for line in r.iter_lines() if line.startswith("data: "))
        for _ in range(3):
            event = next(events)
            assert '"finish_reason":null' in event.replace(" ", ""), event  # still generating
        seq = backend.engine._active[0]  # max_batch 1: the one sequence being decoded is this stream's
        assert seq.max_new >= MAX_TOKENS - 50
    # the client is gone: the sequence leaves the batch at the next step boundary
    wait_until(lambda: seq not in backend.engine._active, timeout=120, what="the sequence to leave the batch")
    assert seq.cancelled and seq.n_generated < MAX_TOKENS // 10, (seq.cancelled, seq.n_generated)
    short = httpx.post(gw.url + "/v1/chat/completions", headers=headers, timeout=120,
                       json={"model": "endless", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                             "temperature": 0})
    assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 2
    assert not backend.engine._active and not backend.engine._pending


def test_client_disconnect_stops_a_non_streaming_embedded_generation(gateway) -> None:
    """The same for a non-streaming request: nothing is sent before the whole answer, so the gateway watches the
    connection itself (once the answer has taken WATCH_AFTER_S) and cancels the generation when it closes."""
    import json
    import socket

    gw, key = gateway
    backend = backend_of(gw)
    body = json.dumps({"model": "endless", "messages": [{"role": "user", "content": "go on"}],
                       "max_tokens": MAX_TOKENS, "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                  + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        seq = wait_until(lambda: backend.engine._active and backend.engine._active[0].n_generated > 0
                         and backend.engine._active[0], timeout=120, what="the generation to start")
        assert seq.max_new >= MAX_TOKENS - 50
    # the client is gone before any answer: the sequence leaves the batch long before its 4,000 tokens
    wait_until(lambda: seq not in backend.engine._active, timeout=120, what="the sequence to leave the batch")
    assert seq.cancelled and seq.n_generated < MAX_TOKENS // 2, (seq.cancelled, seq.n_generated)
    assert not backend.engine._active and not backend.engine._pending
