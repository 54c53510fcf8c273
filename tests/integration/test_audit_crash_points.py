"""Crash points of an inference request's two audit records, with a real gateway process on Postgres, SIGKILL and
no failpoint in the gateway's code (the table is in docs/security-audit-sequencing.md).

The accepted record (who asked for what) commits while the upstream works and is durable before any answer byte
leaves; the completion record follows the answer. A completion that never commits is not silent: ``palisade audit
verify`` lists the request as open, and the chain still verifies. The fake upstream's gate holds a request at the
upstream; a ``LOCK TABLE audit_records IN EXCLUSIVE MODE`` taken by the test (readers go on, appends wait) holds
an append back; ``REVOKE INSERT`` makes the store refuse, as in test_audit_fail_closed.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.app_role import app_role_database
from tests.support.fake_upstreams import FakeServer, serve_fake
from tests.support.server import GatewayProcess, base_env, cli, create_key, principal_ids
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres

ACCEPTED, COMPLETE = "inference:request:accepted", "inference:request:complete"
BODY = {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def dbs(pg_url: str) -> Iterator[tuple[str, str, str]]:
    with app_role_database(pg_url) as found:
        yield found


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeServer]:
    with serve_fake("ok", "openai", token_delay=0.3) as srv:  # slow mode: "Echo: hello" (2 tokens) in 0.6 s
        yield srv


@pytest.fixture(scope="module")
def setup(dbs, upstream, tmp_path_factory) -> tuple[dict[str, str], str]:
    _, app_url, _ = dbs
    data = tmp_path_factory.mktemp("audit-crash")
    models = data / "models.yaml"
    models.write_text(f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
                      "    upstream_model: fake-model\n")
    env = base_env(data, PALISADE_DATABASE_URL=app_url, PALISADE_MODELS_FILE=str(models),
                   PALISADE_AUDIT_WRITE_TIMEOUT_S="3")
    return env, create_key(env, "crash-app", "mock")


@pytest.fixture
def gw(setup) -> Iterator[GatewayProcess]:
    """A gateway process of its own per test (a test may SIGKILL it)."""
    env, _ = setup
    proc = GatewayProcess(env, Path(env["PALISADE_DATA_DIR"]) / "gw.log").start()
    try:
        yield proc
    finally:
        proc.stop()  # after a SIGKILL: nothing left to stop


def records(owner_url: str, rid: str) -> list[tuple[int, str, dict]]:
    with psycopg.connect(owner_url, autocommit=True) as c:
        rows = c.execute("SELECT seq, tag, details FROM audit_records WHERE request_id = %s ORDER BY seq", (rid,))
        return [(seq, tag, json.loads(details)) for seq, tag, details in rows]


def tags(owner_url: str, rid: str) -> list[str]:
    return [tag for _, tag, _ in records(owner_url, rid)]


class Call:
    """One chat completion in a thread: ``response``, or ``error`` when no answer came."""

    def __init__(self, gw: GatewayProcess, key: str, rid: str) -> None:
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.done_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(gw.url, key, rid), daemon=True)
        self._thread.start()

    def _run(self, url: str, key: str, rid: str) -> None:
        try:
            self.response = httpx.post(url + "/v1/chat/completions", json=BODY, timeout=60,
                                       headers={"Authorization": f"Bearer {key}", "X-Request-ID": rid})
        except httpx.HTTPError as exc:
            self.error = exc
        self.done_at = time.monotonic()

    def join(self) -> Call:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the request never ended"
        return self


def verify(env: dict[str, str], *args: str) -> str:
    """``palisade audit verify``: the chain holds (exit 0, last line OK); its stdout."""
    out = cli(env, "audit", "verify", *args, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("OK:"), out.stdout
    return out.stdout


def open_line(stdout: str, rid: str) -> str:
    found = [line for line in stdout.splitlines() if line.startswith(f"OPEN request {rid} ")]
    assert len(found) == 1, stdout
    return found[0]


def kill(gw: GatewayProcess) -> None:
    assert gw.proc is not None
    gw.proc.kill()  # SIGKILL: no shutdown code runs, nothing queued is flushed
    gw.proc.wait(timeout=30)


def rid_for(what: str) -> str:
    return f"crash-{what}-{secrets.token_hex(4)}"


def accepted_while_held(gw, key: str, upstream, owner_url: str, rid: str) -> Call:  # noqa: ANN001
    """Send a request the (held) upstream keeps; return once it is at the upstream and its accepted record is in."""
    call = Call(gw, key, rid)
    upstream.wait_for(lambda s: s.held >= 1, what="the request at the upstream")
    wait_until(lambda: tags(owner_url, rid) == [ACCEPTED], timeout=10, what="the accepted record")
    return call


# --------------------------------------------------------------------------------------------------- normal path
def test_accepted_commits_while_the_upstream_works_and_the_completion_follows(gw, setup, upstream, dbs) -> None:
    env, key = setup
    owner_url = dbs[0]
    rid = rid_for("normal")
    upstream.hold()
    try:
        # durable while the upstream is still working: the commit overlaps the upstream call, not follows it
        call = accepted_while_held(gw, key, upstream, owner_url, rid)
        assert upstream.stats.held == 1 and call.response is None and call.error is None
    finally:
        upstream.release()
    r = call.join().response
    assert r is not None and r.status_code == 200, call.error or r.text
    assert "Echo" in r.json()["choices"][0]["message"]["content"]
    rows = wait_until(lambda: (found := records(owner_url, rid)) and len(found) == 2 and found, timeout=10,
                      what="the completion record")
    (seq_a, tag_a, accepted), (seq_c, tag_c, done) = rows
    assert (tag_a, tag_c) == (ACCEPTED, COMPLETE) and seq_a < seq_c
    assert accepted["status"] == "accepted" and done["status"] == "ok" and done["completion_tokens"] >= 1
    # the completion says everything the single record used to say; the accepted record, who asked for what
    for field in ("auth_method", "auth_id", "client_ip"):
        assert accepted[field] == done[field], field
    assert accepted["prompt_tokens"] >= 1  # the gateway's count; the completion has the upstream's usage
    assert {"latency_ms", "model_version", "completion_tokens"} <= set(done)
    out = verify(env)
    assert f"OPEN request {rid} " not in out
    assert all(line.startswith("OPEN request crash-") for line in out.splitlines() if line.startswith("OPEN"))


def test_a_slow_commit_and_a_slow_upstream_overlap(gw, setup, upstream, dbs) -> None:
    """The accepted record's commit held back by a table lock: the upstream is called and answers meanwhile (the
    two overlap: the answer waits for max(upstream, commit), not their sum), yet nothing leaves until the record
    is durable. Ordering, not timing: a gateway that awaited the commit before calling the upstream never lets the
    upstream see the request while the lock is held; one that answered first would answer while it is held."""
    env, key = setup
    owner_url = dbs[0]
    warm = Call(gw, key, rid_for("warm")).join()  # the first request of a process pays for its cold paths
    assert warm.response is not None and warm.response.status_code == 200
    rid = rid_for("overlap")
    with psycopg.connect(owner_url) as lock:
        lock.execute("LOCK TABLE audit_records IN EXCLUSIVE MODE")
        called = upstream.stats.generations
        call = Call(gw, key, rid)
        try:
            wait_until(lambda: upstream.stats.generations > called, timeout=30,
                       what="the upstream to be called while the accepted record's commit is held back")
            time.sleep(0.5)  # the upstream ("ok") answers at once: time enough to send it, were it not held
            assert call.response is None and call.error is None, "an answer left before its record was durable"
        finally:
            lock.rollback()
    call.join()
    assert call.response is not None and call.response.status_code == 200, call.error
    assert ACCEPTED in tags(owner_url, rid)
    wait_until(lambda: COMPLETE in tags(owner_url, rid), timeout=10, what="the completion")  # before the next test


# --------------------------------------------------------------------------------------------------- refusal
def test_accepted_record_refused_no_answer_leaves(gw, setup, upstream, dbs) -> None:
    """The store starts refusing after the gateway last saw it accept: the upstream is called (the first request
    to find out), but no answer text leaves, the reservation is released and no completion bills anything."""
    env, key = setup
    owner_url, _, role = dbs
    rid = rid_for("refused")
    generations = upstream.stats.generations
    with psycopg.connect(owner_url, autocommit=True) as c:
        c.execute(f'REVOKE INSERT ON audit_records FROM "{role}"')
    try:
        r = Call(gw, key, rid).join().response
    finally:
        with psycopg.connect(owner_url, autocommit=True) as c:
            c.execute(f'GRANT INSERT ON audit_records TO "{role}"')
    assert r is not None and r.status_code == 503, r
    assert "audit" in r.json()["error"]["message"] and "choices" not in r.json() and "Echo" not in r.text
    assert upstream.stats.generations <= generations + 1
    assert records(owner_url, rid) == []  # nothing of it in the trail: no usage recorded to bill
    (pid,) = principal_ids(env, key)
    auth = {"Authorization": f"Bearer {key}"}
    usage = httpx.get(f"{gw.url}/v1/limits/{pid}", params={"model": "mock"}, headers=auth, timeout=10).json()
    assert [s["used"]["concurrent"] for s in usage["scopes"]] == [0] * len(usage["scopes"]), usage
    # once the store accepts again (the gateway probes at most once a second), service resumes
    wait_until(lambda: httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=auth,
                                  timeout=30).status_code == 200, timeout=15, what="service after the grant")
    assert f"OPEN request {rid} " not in verify(env)


# --------------------------------------------------------------------------------------------------- crashes
def test_killed_while_the_upstream_works(gw, setup, upstream, dbs) -> None:
    env, key = setup
    owner_url = dbs[0]
    rid = rid_for("upstream")
    upstream.hold()
    try:
        call = accepted_while_held(gw, key, upstream, owner_url, rid)
        kill(gw)
        call.join()
    finally:
        upstream.release()
    assert call.response is None and call.error is not None  # the client got no answer
    assert tags(owner_url, rid) == [ACCEPTED]
    # who asked for what is on record
    (_, _, accepted), = records(owner_url, rid)
    assert accepted["auth_method"] == "api_key" and accepted["prompt_tokens"] >= 1
    assert "open: no completion recorded" in open_line(verify(env, "--in-flight-s", "0"), rid)
    assert open_line(verify(env), rid).endswith(": in flight")  # younger than the in-flight window


def test_killed_after_the_answer_left_before_its_completion_committed(gw, setup, upstream, dbs) -> None:
    env, key = setup
    owner_url, _, role = dbs
    rid = rid_for("answered")
    upstream.hold()
    lock = psycopg.connect(owner_url)  # a transaction of its own: the lock lasts until its rollback
    watch = psycopg.connect(owner_url, autocommit=True)
    try:
        call = Call(gw, key, rid)
        upstream.wait_for(lambda s: s.held >= 1, what="the request at the upstream")
        wait_until(lambda: tags(owner_url, rid) == [ACCEPTED], timeout=10, what="the accepted record")
        lock.execute("LOCK TABLE audit_records IN EXCLUSIVE MODE")  # appends wait from now on, reads go on
        upstream.release()
        r = call.join().response
        assert r is not None and r.status_code == 200, call.error
        assert "Echo" in r.json()["choices"][0]["message"]["content"]
        # the completion's append is queued behind the lock: the answer did not wait for it
        wait_until(lambda: watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = %s "
            "AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO audit_records%%'", (role,)).fetchone()[0],
            timeout=10, what="the completion's append waiting on the lock")
        kill(gw)
        # Postgres notices a vanished client only when it next talks to it, so a statement it already received
        # could still commit after the lock goes: end the dead gateway's sessions first, as the server would
        watch.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND usename = %s", (role,))
        wait_until(lambda: watch.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND usename = %s", (role,)).fetchone()[0] == 0,
                   timeout=10, what="the dead gateway's sessions gone")
    finally:
        upstream.release()
        lock.rollback()
        lock.close()
        watch.close()
    assert tags(owner_url, rid) == [ACCEPTED]  # answered, and its completion never committed
    assert "open: no completion recorded" in open_line(verify(env, "--in-flight-s", "0"), rid)
