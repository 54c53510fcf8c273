"""Authorization through a real `palisade serve` (embedded mode): every route guarded (401 without a principal),
BFLA, BOLA, BOPLA, the admin policy API with step-up, and an empty policy denying (403, never 500)."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

import httpx
import pyotp
import pytest

from gateway.app import create_app
from gateway.authz.actions import PUBLIC_PATHS, Action
from gateway.settings import Settings
from tests.support.fake_upstreams import serve_fake
from tests.support.server import GatewayProcess, base_env, cli, create_key
from tests.support.waiting import wait_until

SAMPLE = {"int": "1", "str": "x", "path": "x"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, dict]]:
    tmp = tmp_path_factory.mktemp("authz")
    with serve_fake("ok", "openai") as upstream:
        models = tmp / "models.yaml"
        models.write_text(
            f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
            f"    upstream_model: fake-model\n  - alias: secret\n    backend: openai\n"
            f"    url: {upstream.url}\n    upstream_model: fake-model\n    classification: restricted\n"
        )
        env = base_env(tmp, PALISADE_MODELS_FILE=str(models))
        gw = GatewayProcess(env, tmp / "gw.log").start()
        try:
            yield gw, env
        finally:
            gw.stop()


def routes() -> list[tuple[str, str, object]]:
    app = create_app(Settings.from_env())
    out = []
    for route in app.routes:
        for handler in route.route_handlers:
            for method in sorted(getattr(handler, "http_methods", None) or ["GET"]):
                if method in ("HEAD", "OPTIONS"):
                    continue
                out.append((method, route.path, handler))
    return out


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+):(\w+)\}", lambda m: SAMPLE.get(m.group(2), "x"), path)  # {version:int} -> 1


def test_every_route_declares_an_action_and_only_design_public_routes_are_public() -> None:
    found = routes()
    assert len(found) > 20
    for method, path, handler in found:
        action = handler.opt.get("action")  # type: ignore[attr-defined]
        assert action is not None, f"{method} {path} declares no action"
        if action == Action.PUBLIC:
            assert path in PUBLIC_PATHS, f"{method} {path} is public but not a documented public route"
        else:
            assert action in {a.value for a in Action}, f"{method} {path}: unknown action {action}"


def test_unauthenticated_call_to_every_guarded_route_gets_401(gateway) -> None:
    gw, _ = gateway
    checked = 0
    for method, path, handler in routes():
        if handler.opt.get("action") == Action.PUBLIC:  # type: ignore[attr-defined]
            continue
        r = httpx.request(
            method,
            gw.url + concrete(path),
            json={} if method in ("POST", "PUT", "PATCH") else None,
            timeout=10,
        )
        assert r.status_code == 401, f"{method} {path} -> {r.status_code} {r.text[:200]}"
        assert r.json()["error"]["type"] == "authentication_error"
        checked += 1
    assert checked > 15


def key_id(env: dict, key: str) -> str:
    prefix = "_".join(key.split("_")[:2])
    rows = [json.loads(line) for line in cli(env, "keys", "list").stdout.splitlines() if line.startswith("{")]
    return "key:" + next(r["id"] for r in rows if r["prefix"] == prefix)


def login(gw: GatewayProcess, env: dict, role: str) -> tuple[dict[str, str], str]:
    """Create a person with ``role`` through the CLI and log in (password + TOTP); headers for the session."""
    username, password = f"{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    out = cli(env, "admin", "create", "--username", username, "--password", password, "--role", role).stdout
    seed = parse_qs(urlparse(out.strip().splitlines()[-1]).query)["secret"][0]
    r1 = httpx.post(gw.url + "/auth/login", json={"username": username, "password": password}, timeout=10)
    assert r1.status_code == 200, r1.text
    pending = r1.headers["set-cookie"].split(";", 1)[0]
    r2 = httpx.post(
        gw.url + "/auth/login/totp",
        json={"code": pyotp.TOTP(seed).now()},
        headers={"Cookie": pending},
        timeout=10,
    )
    assert r2.status_code == 200, r2.text
    session = next(c.split(";", 1)[0] for c in r2.headers.get_list("set-cookie") if "palisade_session=" in c)
    user = r2.json()["user"]
    return {"Cookie": session, "X-CSRF-Token": r2.json()["csrf_token"]}, f"user:{user['id']}"


ADMIN_CALLS = [
    ("GET", "/admin/policies"),
    ("POST", "/admin/policies"),
    ("GET", "/admin/limits"),
    ("PUT", "/admin/limits/principal/*"),
    ("POST", "/admin/policies/1/rollback"),
]


def test_bfla_apps_and_non_admins_get_403_on_admin_routes(gateway) -> None:
    gw, env = gateway
    app_key = {"Authorization": f"Bearer {create_key(env, 'plain-app')}"}
    viewer, _ = login(gw, env, "viewer")
    for method, path in ADMIN_CALLS:
        for headers in (app_key, viewer):
            r = httpx.request(
                method, gw.url + path, headers=headers, json={"reason": "x", "text": ""}, timeout=10
            )
            assert r.status_code == 403, f"{method} {path} -> {r.status_code}"
            assert r.json()["error"]["decision_id"].startswith("dec_")
            assert "policy.csv" not in r.text and "r.sub" not in r.text  # never the policy text


def test_bola_a_principal_reads_only_its_own_limits(gateway) -> None:
    gw, env = gateway
    a, b = create_key(env, "tenant-a"), create_key(env, "tenant-b")
    a_id, b_id = key_id(env, a), key_id(env, b)
    mine = httpx.get(f"{gw.url}/v1/limits/{a_id}", headers={"Authorization": f"Bearer {a}"}, timeout=10)
    assert mine.status_code == 200 and mine.json()["principal"] == a_id
    theirs = httpx.get(f"{gw.url}/v1/limits/{b_id}", headers={"Authorization": f"Bearer {a}"}, timeout=10)
    assert theirs.status_code == 403


def test_admin_policy_api_bopla_apply_test_rollback_and_empty_policy(gateway) -> None:
    gw, env = gateway
    admin, admin_id = login(gw, env, "admin")
    app = {"Authorization": f"Bearer {create_key(env, 'victim-app')}"}
    current = httpx.get(gw.url + "/admin/policies/", headers=admin, timeout=10)
    assert current.status_code == 200
    base_version, text = current.json()["version"], current.json()["text"]

    # BOPLA: the actor (and version) are never taken from the body
    spoof = httpx.post(
        gw.url + "/admin/policies/",
        headers=admin,
        timeout=10,
        json={"text": text + "\n", "reason": "x", "actor": "someone-else"},
    )
    assert spoof.status_code == 400
    bad = httpx.post(
        gw.url + "/admin/policies/",
        headers=admin,
        timeout=10,
        json={"text": 'p, *, "r.sub.__class__", True, True, allow, pwn\n', "reason": "try"},
    )
    assert bad.status_code == 400 and "__class__" in bad.json()["error"]["message"]

    # policy test explains the rule before anything is applied
    test = httpx.post(
        gw.url + "/admin/policies/test",
        headers=admin,
        timeout=10,
        json={
            "text": "",
            "action": "inference:model:invoke",
            "principal": {"kind": "app"},
            "resource": {"model": "mock", "classification": "internal"},
        },
    )
    assert test.status_code == 200 and test.json()["allowed"] is False

    # an empty policy denies everything (403, never 500) ...
    empty = httpx.post(
        gw.url + "/admin/policies/",
        headers=admin,
        timeout=10,
        json={"text": "# nothing allowed\n", "reason": "lockdown drill"},
    )
    assert empty.status_code == 201 and empty.json()["actor"] == admin_id
    wait_until(lambda: httpx.get(gw.url + "/v1/models", headers=app, timeout=10).status_code == 403, timeout=10,
               what="the empty policy to load")
    chat = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert httpx.post(gw.url + "/v1/chat/completions", headers=app, json=chat, timeout=10).status_code == 403
    assert httpx.get(gw.url + "/v1/models", headers=app, timeout=10).status_code == 403
    assert httpx.get(gw.url + "/admin/policies/", headers=admin, timeout=10).status_code == 403
    # ... and the local operator restores it (audited as "cli")
    cli(env, "policy", "rollback", str(base_version), "--reason", "end of drill")
    wait_until(lambda: httpx.get(gw.url + "/v1/models", headers=app, timeout=10).status_code == 200, timeout=10,
               what="the restored policy to load")
    assert httpx.post(gw.url + "/v1/chat/completions", headers=app, json=chat, timeout=10).status_code == 200
    models = httpx.get(gw.url + "/v1/models", headers=app, timeout=10).json()["data"]
    assert [m["id"] for m in models] == ["mock"]  # the restricted model is not listed for an uncleared app
    history = httpx.get(gw.url + "/admin/policies/history", headers=admin, timeout=10).json()["versions"]
    assert [v["actor"] for v in history[:2]] == ["cli", admin_id]
