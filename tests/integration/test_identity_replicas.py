"""Identity across real gateway processes (Postgres + Redis): two `palisade serve` replicas and the CLI.

- a key revoked through the CLI, or through one replica's admin API, is refused by the other replica at once
  (each replica caches verified keys; revocation is broadcast over Redis);
- a client-credentials token issued by one replica works on the other, also as the `openai` SDK's api_key;
- one TOTP code submitted concurrently to both replicas logs in exactly once;
- disabling or deleting an OAuth2 client (CLI or admin API) ends its issued tokens at once on every replica, also
  on one with its own data directory (so only the Redis broadcast, not the shared marker file, can tell it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest

from gateway.authn import totp
from tests.support.fake_upstreams import fake_upstream
from tests.support.server import ROOT, GatewayProcess, base_env, cli, create_key, start_all

PASSWORD = "correct horse battery staple 42"

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, pg_url, redis_url):
    data = tmp_path_factory.mktemp("replicas")
    with fake_upstream("ok", "openai") as upstream:
        models = data / "models.yaml"
        models.write_text(
            f'models:\n  - alias: mock\n    backend: openai\n    url: "{upstream}"\n'
            f"    upstream_model: fake-model\n"
        )
        env = base_env(
            data,
            PALISADE_DATABASE_URL=pg_url,
            PALISADE_REDIS_URL=redis_url,
            PALISADE_MODELS_FILE=str(models),
            PALISADE_ISSUER="http://palisade.test",
            PALISADE_LOGIN_SLOWDOWN_AFTER="1000",
        )
        cli(env, "migrate")
        a, b = start_all([GatewayProcess(env, data / "a.log"), GatewayProcess(env, data / "b.log")])
        try:
            yield a, b, env
        finally:
            a.stop()
            b.stop()


def models_status(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def create_person(env: dict, username: str, role: str = "admin") -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "admin", "create", "--username", username, "--role", role],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    uri = out.strip().splitlines()[-1]
    assert uri.startswith("otpauth://totp/")
    return parse_qs(urlsplit(uri).query)["secret"][0]


def cookie_from(resp: httpx.Response, name: str) -> str:
    for header in resp.headers.get_list("set-cookie"):
        if header.startswith(name + "="):
            return header.split(";")[0].split("=", 1)[1]
    raise AssertionError(f"no {name} cookie in {resp.headers.get_list('set-cookie')}")


def begin_login(url: str, username: str) -> str:
    r = httpx.post(f"{url}/auth/login", json={"username": username, "password": PASSWORD}, timeout=10)
    assert r.status_code == 200, r.text
    return cookie_from(r, "__Host-palisade_login")


def finish_login(url: str, pending: str, code: str) -> httpx.Response:
    # Secure cookies are not sent over plain http by httpx's jar, so the test carries them by hand
    return httpx.post(
        f"{url}/auth/login/totp",
        json={"code": code},
        timeout=10,
        headers={"Cookie": f"__Host-palisade_login={pending}"},
    )


def test_revocation_through_cli_is_refused_on_every_replica_at_once(replicas):
    a, b, env = replicas
    key = create_key(env, "revoke-me", "mock")
    for _ in range(3):  # warm both replicas' verified-key caches
        assert models_status(a.url, key) == 200 and models_status(b.url, key) == 200
    prefix = key[:16]  # "pal_" + 12 hex: the public part
    cli(env, "keys", "revoke", prefix)
    assert models_status(b.url, key) == 401
    assert models_status(a.url, key) == 401


def test_revocation_through_one_replica_is_refused_by_the_other_at_once(replicas):
    a, b, env = replicas
    seed = create_person(env, "replica-admin")
    pending = begin_login(a.url, "replica-admin")
    done = finish_login(a.url, pending, totp.code_at(seed))
    assert done.status_code == 200, done.text
    session, csrf = cookie_from(done, "__Host-palisade_session"), done.json()["csrf_token"]
    headers = {"Cookie": f"__Host-palisade_session={session}", "X-CSRF-Token": csrf}
    for i in range(3):
        key = create_key(env, f"api-revoke-{i}", "mock")
        assert models_status(b.url, key) == 200 and models_status(b.url, key) == 200
        prefix = key[:16]  # "pal_" + 12 hex: the public part
        r = httpx.post(f"{a.url}/admin/keys/{prefix}/revoke", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        assert models_status(b.url, key) == 401  # the very next request on the other replica


def test_client_token_from_one_replica_works_on_the_other_with_the_openai_sdk(replicas):
    a, b, env = replicas
    creds = json.loads(
        cli(env, "clients", "create", "--name", "sdk-app", "--model", "mock").stdout.strip().splitlines()[-1]
    )
    assert set(creds) == {"client_id", "client_secret"}
    r = httpx.post(
        f"{a.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(creds["client_id"], creds["client_secret"]),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    sdk = openai.OpenAI(base_url=f"{b.url}/v1", api_key=token, max_retries=0)
    assert [m.id for m in sdk.models.list()] == ["mock"]
    answer = sdk.chat.completions.create(model="mock", messages=[{"role": "user", "content": "ping"}])
    assert "ping" in answer.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{b.url}/v1", api_key=token[:-4] + "AAAA", max_retries=0).models.list()


def test_one_totp_code_submitted_to_both_replicas_concurrently_wins_once(replicas):
    a, b, env = replicas
    for round_ in range(2):
        username = f"racer-{round_}"
        seed = create_person(env, username, role="viewer")
        urls = [a.url, b.url] * 4
        pendings = [begin_login(u, username) for u in urls]
        code = totp.code_at(seed)
        deadline = time.time() + 1

        def submit(up, deadline=deadline, code=code):  # all threads fire at the same instant
            time.sleep(max(0.0, deadline - time.time()))
            return finish_login(up[0], up[1], code).status_code

        with ThreadPoolExecutor(len(urls)) as pool:
            statuses = list(pool.map(submit, zip(urls, pendings, strict=True)))
        assert sorted(statuses) == [200] + [401] * (len(urls) - 1), statuses


@pytest.fixture(scope="module")
def lone_replica(replicas, tmp_path_factory):
    """A third replica with its own data directory (same database, Redis and master key)."""
    a, _, env = replicas
    master = (Path(env["PALISADE_DATA_DIR"]) / "master.key").read_text().split()
    data = tmp_path_factory.mktemp("lone")
    lone_env = {**env, "PALISADE_DATA_DIR": str(data), "PALISADE_MASTER_KEY": ",".join(reversed(master))}
    c = GatewayProcess(lone_env, data / "c.log").start()
    try:
        yield c
    finally:
        c.stop()


def client_token(url: str, creds: dict) -> str:
    r = httpx.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(creds["client_id"], creds["client_secret"]),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_disabling_or_deleting_a_client_ends_its_tokens_on_every_replica_at_once(replicas, lone_replica):
    a, b, env = replicas
    urls = [a.url, b.url, lone_replica.url]
    seed = create_person(env, "client-admin")
    done = finish_login(a.url, begin_login(a.url, "client-admin"), totp.code_at(seed))
    assert done.status_code == 200, done.text
    admin = {
        "Cookie": f"__Host-palisade_session={cookie_from(done, '__Host-palisade_session')}",
        "X-CSRF-Token": done.json()["csrf_token"],
    }
    ends = [
        lambda cid: cli(env, "clients", "disable", cid),
        lambda cid: httpx.post(f"{a.url}/admin/clients/{cid}/disable", headers=admin, timeout=10),
        lambda cid: httpx.delete(f"{a.url}/admin/clients/{cid}", headers=admin, timeout=10),
    ]
    for i, end in enumerate(ends):
        made = httpx.post(
            f"{a.url}/admin/clients", json={"name": f"ending-{i}", "models": ["mock"]}, headers=admin, timeout=10
        )
        assert made.status_code == 201, made.text
        creds = made.json()
        token = client_token(b.url, creds)
        for _ in range(2):  # warm every replica's verified-client cache
            assert [models_status(u, token) for u in urls] == [200, 200, 200]
        result = end(creds["client_id"])
        assert getattr(result, "returncode", None) == 0 or getattr(result, "status_code", None) == 200, result
        # the very next request on every replica, the lone one first (it hears only the Redis broadcast)
        assert [models_status(u, token) for u in reversed(urls)] == [401, 401, 401], i
