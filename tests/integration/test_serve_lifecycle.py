"""``palisade serve`` starts and stops like a service, and the README's first request gets a sensible answer.

The built-in model (SmolLM2, embedded) is slow to load, so one ``palisade serve`` started as ``make run`` starts it
(embedded mode: with the Celery worker beside it) answers the README's curl and tour, then runs a batch in that
worker (which loads the model a second time), and last is SIGKILLed: its worker must not outlive it.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server import ROOT, GatewayProcess, base_env, create_key

README = (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_sigterm_during_model_load_exits_within_5s(tmp_path: Path):
    env = base_env(tmp_path)  # the built-in model: its GGUF takes many seconds to load
    gw = GatewayProcess(env, tmp_path / "serve.log").start(ready=False)
    try:
        r = httpx.get(gw.url + "/readyz", timeout=5)
        assert r.status_code == 503
        assert r.json()["checks"]["models"]["loading"] == ["chat"]
        # a request for the loading alias is told so, not hung
        key = create_key(env, "early", "chat")
        r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        assert r.headers["retry-after"]
        assert gw.proc is not None
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(timeout=15)
        assert time.monotonic() - started < 5.0, gw.log()[-2000:]
    finally:
        gw.stop()


def _readme_curl() -> str:
    block = re.search(r"```bash\nKEY=pal_\.\.\..*?\n(curl .*?)\n```", README, re.S)
    assert block, "the README's first curl moved; keep this test pointing at it"
    return block.group(1)


def _readme_tour() -> str:
    block = re.search(r"## A 5-minute tour.*?```python\n(.*?)```", README, re.S)
    assert block and "text_generation" in block.group(1), "the tour's client block moved; keep this test on it"
    return block.group(1)


# the tour's Python block run as written (only the port and the key filled in); the value of its last line printed
_RUN_TOUR = """
import ast, os, sys
tree = ast.parse(sys.stdin.read())
last = tree.body.pop()
assert isinstance(last, ast.Expr), "the tour's block should end with the TGI client's answer"
scope = {"KEY": os.environ["KEY"]}
exec(compile(tree, "README", "exec"), scope)
print(eval(compile(ast.Expression(last.value), "README", "eval"), scope))
"""


QUESTIONS = {"france": "What is the capital of France?", "hello": "Say hello in one word."}


class Builtin:
    def __init__(self, gw: GatewayProcess, env: dict[str, str], batch_key: str, batch_id: str) -> None:
        self.gw, self.env, self.batch_key, self.batch_id = gw, env, batch_key, batch_id


@pytest.fixture(scope="module")
def builtin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builtin]:
    """`make run`: serve the built-in model as `chat`, in embedded mode, so with the Celery worker it starts.

    The batch is sent as soon as serve answers /healthz, so the worker loads its copy of the model while serve
    loads its own; the batch test below waits for it and checks its output."""
    tmp = tmp_path_factory.mktemp("builtin")
    env = base_env(tmp, PALISADE_SERVE_WORKER="true")  # the embedded default (base_env turns it off)
    gw = GatewayProcess(env, tmp / "serve.log").start(timeout=300, ready=False)
    try:
        batch_key = create_key(env, "builtin-batch")
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=batch_key, max_retries=0)
        data = b"".join(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": "chat", "max_tokens": 16, "temperature": 0,
                                             "messages": [{"role": "user", "content": q}]}}).encode() + b"\n"
                        for cid, q in QUESTIONS.items())
        f = c.files.create(file=("builtin.jsonl", data), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        gw.wait(timeout=300)
        yield Builtin(gw, env, batch_key, b.id)
    finally:
        gw.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)  # loads the built-in model (tens of seconds; minutes on a busy machine)
def test_readme_first_request_answers_paris(builtin: Builtin):
    """The README's first curl, then the tour's client lines (OpenAI SDK, TGI client), on the same gateway."""
    gw, env = builtin.gw, builtin.env
    key = create_key(env, "demo-app", "chat")
    command = _readme_curl().replace("localhost:8000", f"127.0.0.1:{gw.port}")
    out = subprocess.run(["bash", "-c", command], env={**env, "KEY": key}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    answer = body["choices"][0]["message"]["content"]
    assert "Paris" in answer, answer
    assert body["choices"][0]["finish_reason"] == "stop"  # it ends by itself, not at the length cap

    # the tour: TGI's client through its chat method (the model's chat template), an answer, not a ramble
    tour = _readme_tour().replace("localhost:8000", f"127.0.0.1:{gw.port}")
    out = subprocess.run([sys.executable, "-c", _RUN_TOUR], input=tour, env={**env, "KEY": key},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Paris" in out.stdout and len(out.stdout) < 400, out.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)  # the worker loads the built-in model for the batch
def test_batch_on_builtin_model_with_the_worker_serve_starts(builtin: Builtin):
    """In embedded mode serve starts the Celery worker that runs batches: one command is enough."""
    gw = builtin.gw
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=builtin.batch_key, max_retries=0)
    deadline = time.monotonic() + 600
    while (b := c.batches.retrieve(builtin.batch_id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, gw.log()[-3000:]
        time.sleep(0.25)
    assert b.status == "completed", b.errors
    out = {o["custom_id"]: o for o in map(json.loads, c.files.content(b.output_file_id).content.splitlines())}
    assert set(out) == set(QUESTIONS)
    assert "Paris" in out["france"]["response"]["body"]["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_worker_ends_when_serve_is_killed(builtin: Builtin):
    """Serve dies without running its own shutdown (SIGKILL, the OOM killer): its worker must not live on.

    Last in this module: it kills the shared gateway (after the batch above, so the worker has a model loaded)."""
    gw = builtin.gw
    assert gw.proc is not None and gw.alive(), gw.log()[-3000:]
    workers = [pid for pid in _children(gw.proc.pid) if b"worker" in _cmdline(pid)]
    assert len(workers) == 1, workers
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(timeout=10)
    deadline = time.monotonic() + 60  # Celery's warm shutdown
    while _running(workers[0]):
        assert time.monotonic() < deadline, "the worker outlived the serve that started it"
        time.sleep(0.1)


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
