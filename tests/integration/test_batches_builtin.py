"""A batch on the built-in model (SmolLM2, embedded) with `palisade serve` alone: in embedded mode it starts the
Celery worker that runs the batch, so one command is enough (slow: loads the real model in two processes). That
worker also ends with serve, even when serve is killed outright."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

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

        # serve dies without running its own shutdown (SIGKILL, the OOM killer): its worker must not live on
        workers = [pid for pid in _children(gw.proc.pid) if b"worker" in _cmdline(pid)]
        assert len(workers) == 1, workers
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(timeout=10)
        deadline = time.monotonic() + 60  # Celery's warm shutdown
        while _running(workers[0]):
            assert time.monotonic() < deadline, "the worker outlived the serve that started it"
            time.sleep(0.5)
    finally:
        gw.stop()


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _stat(int(p.name))[1:2] == [str(pid)]]


def _stat(pid: int) -> list[str]:
    """State and parent pid from /proc/PID/stat ([] once it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _running(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"], ["X"])  # a zombie has exited; only its parent's wait() is missing
