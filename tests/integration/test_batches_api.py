"""OpenAI's Files and Batch API through the official `openai` SDK, against a real `palisade serve` and a real
Celery worker process (embedded mode: SQLite database and broker), with a tiny embedded model and a slow fake
OpenAI-compatible upstream that counts how often each prompt was answered."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.support.fake_upstreams import serve_fake
from tests.support.server import ROOT, GatewayProcess, base_env, cli, create_key

CONCURRENCY = 4


class Worker:
    """`palisade worker` in a subprocess (solo pool: one process, so a kill takes the whole worker)."""

    def __init__(self, env: dict[str, str], log) -> None:
        self.env, self.log_path = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu"],
                                     env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    data = tmp_path_factory.mktemp("gw-batches")
    with serve_fake("slow", "openai", token_delay=0.1) as fake:
        models = data / "models.yaml"
        models.write_text(
            "models:\n"
            f"  - alias: tiny\n    backend: embedded\n    model: {tiny_model_dir}\n    retain_content: true\n"
            f"  - alias: fake\n    backend: openai\n    url: {fake.url}\n    upstream_model: fake-model\n"
        )
        env = base_env(data, PALISADE_MODELS_FILE=str(models), PALISADE_BATCH_CONCURRENCY=str(CONCURRENCY),
                       PALISADE_BATCH_LEASE_S="2",
                       PALISADE_SERVE_WORKER="false")  # this test runs (and kills) the worker itself
        owner = create_key(env, "batch-owner", "tiny", "fake")
        stranger = create_key(env, "stranger")
        worker = Worker(env, data / "worker.log").start()  # boots while the gateway does
        gateway = GatewayProcess(env, data / "serve.log").start()
        state = {"gw": gateway, "env": env, "owner": owner, "stranger": stranger, "fake": fake, "worker": worker,
                 "data": data}
        try:
            yield state
        finally:
            state["worker"].stop()  # the one running now: a test may have killed the first and started another
            gateway.stop()


def client(stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["gw"].url + "/v1", api_key=key, max_retries=0)


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(cid: str, model: str, text: str, max_tokens: int = 4) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                     "temperature": 0}}


def wait_for(c: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 90.0, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = c.batches.retrieve(batch_id)
        if b.status in statuses:
            return b
        time.sleep(0.3)
    raise AssertionError(f"batch stayed {b.status}: {b}\n{log() if log else ''}")


def output_lines(c: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in c.files.content(file_id).content.splitlines() if x.strip()]


def worker_log(stack):
    return lambda: (stack["data"] / "worker.log").read_text(errors="replace")[-4000:]


def test_batch_on_tiny_model_completes_and_matches_every_custom_id(stack):
    c = client(stack, stack["owner"])
    lines = [chat_line(f"req-{i}", "tiny", f"question {i}") for i in range(5)]
    f = c.files.create(file=("tiny.jsonl", jsonl(lines)), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(jsonl(lines)) and f.status == "processed"
    assert c.files.retrieve(f.id).filename == "tiny.jsonl"
    assert c.files.content(f.id).content == jsonl(lines)  # decrypts back to the upload
    assert f.id in [x.id for x in c.files.list(purpose="batch").data]

    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                         metadata={"job": "nightly"})
    assert b.status == "validating" and b.metadata == {"job": "nightly"}
    done = wait_for(c, b.id, ("completed", "failed"), log=worker_log(stack))
    assert done.status == "completed", done.errors
    assert done.request_counts.total == 5 and done.request_counts.completed == 5 and done.request_counts.failed == 0
    assert done.error_file_id is None and done.completed_at and done.in_progress_at
    out = output_lines(c, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(5))
    for o in out:
        assert o["id"].startswith("batch_req_") and o["error"] is None
        assert o["response"]["status_code"] == 200 and o["response"]["request_id"]
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "tiny"
        assert 0 < body["usage"]["completion_tokens"] <= 4
    assert b.id in [x.id for x in c.batches.list().data]
    with pytest.raises(openai.BadRequestError):
        c.batches.cancel(b.id)  # a completed batch cannot be cancelled
    # each line is an audited request of the owner's: it can be rated like an interactive answer
    rid = out[0]["response"]["request_id"]
    rated = httpx.post(stack["gw"].url + "/v1/feedback", headers={"Authorization": f"Bearer {stack['owner']}"},
                       json={"request_id": rid, "rating": "up"})
    assert rated.status_code == 200, rated.text
    assert httpx.post(stack["gw"].url + "/v1/feedback", headers={"Authorization": f"Bearer {stack['stranger']}"},
                      json={"request_id": rid, "rating": "down"}).status_code == 404
    # stored encrypted: the upload's text is nowhere on disk in clear
    stored = b"".join(p.read_bytes() for p in (stack["data"] / "files").iterdir())
    assert b"question 3" not in stored and b"req-3" not in stored


def test_malformed_file_fails_validation_with_line_errors(stack):
    c = client(stack, stack["owner"])
    lines = [
        jsonl([chat_line("a", "tiny", "ok")]),
        b"{not json\n",
        jsonl([{**chat_line("b", "tiny", "x"), "url": "/v1/embeddings"}]),
        jsonl([chat_line("a", "tiny", "duplicate")]),
        jsonl([chat_line("c", "secret-model", "no access")]),
        jsonl([{"custom_id": "d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "tiny"}}]),
    ]
    f = c.files.create(file=("bad.jsonl", b"".join(lines)), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(c, b.id, ("failed", "completed"), log=worker_log(stack))
    assert done.status == "failed" and done.failed_at
    errors = {(e.line, e.code) for e in done.errors.data}
    assert {(2, "invalid_json_line"), (3, "invalid_url"), (4, "duplicate_custom_id"), (5, "model_not_found"),
            (6, "invalid_body")} <= errors
    assert done.output_file_id is None and stack["fake"].stats.answered.get("ok") is None


def test_bad_requests_are_refused_up_front(stack):
    c = client(stack, stack["owner"])
    f = c.files.create(file=("x.jsonl", jsonl([chat_line("a", "tiny", "x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-doesnotexist", endpoint="/v1/chat/completions",
                         completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")


def test_another_principal_gets_404_for_batch_file_and_content(stack):
    owner, stranger = client(stack, stack["owner"]), client(stack, stack["stranger"])
    f = owner.files.create(file=("mine.jsonl", jsonl([chat_line("a", "tiny", "private words")])), purpose="batch")
    b = owner.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(owner, b.id, ("completed", "failed"), log=worker_log(stack))
    assert done.status == "completed"
    for call in (lambda: stranger.batches.retrieve(b.id), lambda: stranger.files.retrieve(f.id),
                 lambda: stranger.files.content(f.id), lambda: stranger.files.content(done.output_file_id),
                 lambda: stranger.files.retrieve(done.output_file_id), lambda: stranger.batches.cancel(b.id),
                 lambda: stranger.files.delete(f.id),
                 lambda: stranger.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                 completion_window="24h")):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert "private words" not in str(err.value.body)
    assert f.id not in [x.id for x in stranger.files.list().data]
    assert b.id not in [x.id for x in stranger.batches.list().data]
    # the owner still has everything, and may delete it
    assert owner.files.retrieve(f.id).id == f.id
    assert owner.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        owner.files.retrieve(f.id)


def test_cancel_keeps_finished_lines(stack):
    c = client(stack, stack["owner"])
    lines = [chat_line(f"slow-{i}", "fake", f"cancel me {i}", max_tokens=8) for i in range(30)]
    f = c.files.create(file=("slow.jsonl", jsonl(lines)), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while c.batches.retrieve(b.id).request_counts.completed < 2:
        assert time.monotonic() < deadline, worker_log(stack)()
        time.sleep(0.2)
    cancelling = c.batches.cancel(b.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_for(c, b.id, ("cancelled",), log=worker_log(stack))
    assert done.cancelled_at and 2 <= done.request_counts.completed < 30
    out = output_lines(c, done.output_file_id)
    assert len(out) == done.request_counts.completed
    assert {o["custom_id"] for o in out} <= {f"slow-{i}" for i in range(30)}
    assert c.batches.cancel(b.id).status == "cancelled"  # cancelling again changes nothing


def test_killed_worker_resumes_without_rerunning_finished_lines(stack):
    c = client(stack, stack["owner"])
    n = 40
    lines = [chat_line(f"k-{i}", "fake", f"kill line {i}", max_tokens=3) for i in range(n)]
    f = c.files.create(file=("kill.jsonl", jsonl(lines)), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while c.batches.retrieve(b.id).request_counts.completed < 3 * CONCURRENCY:
        assert time.monotonic() < deadline, worker_log(stack)()
        time.sleep(0.1)
    stack["worker"].kill()
    finished_before = c.batches.retrieve(b.id).request_counts.completed
    assert finished_before < n, "the batch finished before the kill; make the lines slower"
    stack["worker"] = Worker(stack["env"], stack["data"] / "worker.log").start()
    done = wait_for(c, b.id, ("completed",), timeout=120, log=worker_log(stack))
    assert done.request_counts.completed == n and done.request_counts.failed == 0
    answered = {k: v for k, v in stack["fake"].stats.answered.items() if k.startswith("kill line ")}
    assert set(answered) == {f"kill line {i}" for i in range(n)}
    rerun = sum(answered.values()) - n
    # only the lines in flight at the kill can run twice; the finished ones (more than that) ran once
    assert rerun <= CONCURRENCY < finished_before
    out = output_lines(c, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"k-{i}" for i in range(n))


def test_feedback_only_from_the_requester(stack):
    owner = client(stack, stack["owner"])
    raw = owner.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "rate me"}], max_tokens=4, temperature=0)
    rid = raw.headers["x-request-id"]
    url = stack["gw"].url + "/v1/feedback"
    mine = httpx.post(url, headers={"Authorization": f"Bearer {stack['owner']}"},
                      json={"request_id": rid, "rating": 2, "comment": "too short", "correction": "A better one."})
    assert mine.status_code == 200, mine.text
    assert mine.json()["rating"] == "2" and mine.json()["model"] == "tiny"
    again = httpx.post(url, headers={"Authorization": f"Bearer {stack['owner']}"},
                       json={"request_id": rid, "rating": "down"})
    assert again.status_code == 200 and again.json()["id"] == mine.json()["id"]  # one feedback per request
    strange = httpx.post(url, headers={"Authorization": f"Bearer {stack['stranger']}"},
                         json={"request_id": rid, "rating": "up"})
    assert strange.status_code == 404, strange.text
    bad = httpx.post(url, headers={"Authorization": f"Bearer {stack['owner']}"},
                     json={"request_id": rid, "rating": 9})
    assert bad.status_code == 400
    # apps cannot read rates or export: that is administration; the operator exports a dataset file
    out = stack["data"] / "feedback.jsonl"
    last = json.loads(cli(stack["env"], "feedback", "export", "--out", str(out), "--max-rating", "2",
                          "--dataset", "feedback-fixes").stdout.splitlines()[-1])
    assert last["records"] >= 1 and last["dataset_version"]
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert {"messages": [{"role": "user", "content": "rate me"}, {"role": "assistant", "content": "A better one."}]} \
        in records
    rates_out = json.loads(cli(stack["env"], "feedback", "rates", "--model", "tiny").stdout.splitlines()[-1])
    assert rates_out["data"][0]["model"] == "tiny" and rates_out["data"][0]["down"] >= 1
    # the export went into the datasets pipeline as a new dataset version, which the worker processes
    deadline = time.monotonic() + 120
    while (card := json.loads(cli(stack["env"], "datasets", "show", last["dataset_version"]).stdout.splitlines()[-1])
           )["status"] == "processing":
        assert time.monotonic() < deadline, worker_log(stack)()
        time.sleep(1)
    assert card["status"] == "ready", card
    assert card["records_in"] >= 1
    rates = httpx.get(stack["gw"].url + "/admin/feedback/rates", headers={"Authorization": f"Bearer {stack['owner']}"})
    assert rates.status_code == 403
