"""A batch on the built-in model (SmolLM2, embedded) with `palisade serve` alone: in embedded mode it starts the
Celery worker that runs the batch, so one command is enough (slow: loads the real model in two processes)."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.support.server import GatewayProcess, base_env, create_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_batch_on_builtin_model_with_the_worker_serve_starts(tmp_path):
    env = base_env(tmp_path, PALISADE_SERVE_WORKER="true")  # the embedded default: serve starts the worker
    key = create_key(env, "builtin-batch")
    gw = GatewayProcess(env, tmp_path / "serve.log").start(timeout=300)
    try:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
        questions = {"france": "What is the capital of France?", "hello": "Say hello in one word."}
        data = b"".join(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": "chat", "max_tokens": 16, "temperature": 0,
                                             "messages": [{"role": "user", "content": q}]}}).encode() + b"\n"
                        for cid, q in questions.items())
        f = c.files.create(file=("builtin.jsonl", data), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 600
        while (b := c.batches.retrieve(b.id)).status not in ("completed", "failed"):
            assert time.monotonic() < deadline, gw.log()[-3000:]
            time.sleep(1)
        assert b.status == "completed", b.errors
        out = {o["custom_id"]: o for o in map(json.loads, c.files.content(b.output_file_id).content.splitlines())}
        assert set(out) == set(questions)
        assert "Paris" in out["france"]["response"]["body"]["choices"][0]["message"]["content"]
    finally:
        gw.stop()
