"""``palisade serve`` starts and stops like a service, and the README's first request gets a sensible answer."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
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


@pytest.mark.slow
@pytest.mark.timeout(900)  # loads the built-in model (tens of seconds; minutes on a busy machine)
def test_readme_first_request_answers_paris(tmp_path: Path):
    """The README's first curl, then the tour's client lines (OpenAI SDK, TGI client), on the same gateway."""
    env = base_env(tmp_path)
    gw = GatewayProcess(env, tmp_path / "serve.log").start(timeout=300)
    try:
        key = create_key(env, "demo-app", "chat")
        command = _readme_curl().replace("localhost:8000", f"127.0.0.1:{gw.port}")
        out = subprocess.run(["bash", "-c", command], env={**env, "KEY": key}, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        import json

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
    finally:
        gw.stop()
