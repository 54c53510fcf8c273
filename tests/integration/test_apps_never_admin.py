"""Apps never reach administration, audit or self-service, whatever the policy says.

The policy is replaced by one that allows everything to everyone (no deny rows). A person without the admin
role then reaches an admin route, which shows the permissive policy is in force; yet both kinds of app
credential, an API key and an OAuth client's JWT, get 403 on every route whose action the authentication-method
table keeps from apps (gateway/authz/enforcer.py ``APP_GRANTS``), enumerated from the running app's routes so a
new admin route is covered the day it is added.
"""

from __future__ import annotations

import re

import pytest

from gateway.app import services_of
from gateway.authz.actions import Action
from gateway.authz.enforcer import APP_GRANTS
from tests.integration.test_identity_helpers import gateway_client, identity_settings, login, make_person
from tests.support.fake_upstreams import fake_upstream
from tests.support.waiting import await_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

PERMISSIVE = "p, *, True, True, True, allow, everyone-everything\n"
SAMPLE = {"int": "1"}


@pytest.fixture(scope="module")
async def gw(tmp_path_factory):
    with fake_upstream("ok", "openai") as upstream:
        settings = identity_settings(tmp_path_factory.mktemp("apps-admin"), upstream,
                                     policy_check_interval_s=0.1)
        async with gateway_client(settings) as (client, app):
            yield client, app


def app_only_routes(app) -> list[tuple[str, str, str]]:
    """(method, concrete path, action) of every guarded route an app may not reach."""
    out = []
    for route in app.routes:
        for handler in route.route_handlers:
            action = handler.opt.get("action")
            if action in (None, Action.PUBLIC) or any(str(action).startswith(g) for g in APP_GRANTS):
                continue
            path = re.sub(r"\{(\w+):(\w+)\}", lambda m: SAMPLE.get(m.group(2), "x"), route.path)
            for method in sorted(getattr(handler, "http_methods", None) or ["GET"]):
                if method not in ("HEAD", "OPTIONS"):
                    out.append((method, path, str(action)))
    return out


async def test_api_keys_and_oauth_tokens_get_403_on_every_admin_route_under_an_allow_all_policy(gw) -> None:
    client, app = gw
    s = services_of(app)
    admin = await make_person(app, "admin")
    h = {"X-CSRF-Token": await login(client, admin)}
    r = await client.post("/admin/policies/", json={"text": PERMISSIVE, "reason": "drill: allow everything"},
                          headers=h)
    assert r.status_code == 201, r.text
    version = r.json()["version"]
    await await_until(lambda: _version_is(s, version), timeout=10, what="the permissive policy to load")

    # the policy really is permissive: a viewer (not an admin) now reads the admin limits overview
    viewer = await make_person(app, "viewer")
    async with _browser(client) as other:
        vh = {"X-CSRF-Token": await login(other, viewer)}
        assert (await other.get("/admin/limits/", headers=vh)).status_code == 200

    key = (await s.keys.create("would-be-admin-key")).key
    oauth = await s.identity.clients.create("would-be-admin-client")
    token = (await client.post("/oauth/token", data={"grant_type": "client_credentials"},
                               auth=(oauth.client_id, oauth.client_secret))).json()["access_token"]
    routes = app_only_routes(app)
    actions = {a for _, _, a in routes}
    assert {"admin:policy:write", "admin:key:write", "admin:user:write", "admin:limit:write",
            "self:account:write"} <= actions, actions
    assert len(routes) >= 30, len(routes)
    async with _browser(client) as bare:  # no cookies: only the bearer credential speaks
        for label, bearer in (("api key", key), ("oauth token", token)):
            for method, path, action in routes:
                r = await bare.request(method, path, json={}, headers={"Authorization": f"Bearer {bearer}"})
                assert r.status_code == 403, f"{label}: {method} {path} ({action}) -> {r.status_code} {r.text[:200]}"
                err = r.json()["error"]
                assert err["type"] == "permission_error" and err["decision_id"].startswith("dec_"), err
            # the same credential is otherwise valid: the policy lets it list models
            assert (await bare.get("/v1/models", headers={"Authorization": f"Bearer {bearer}"})).status_code == 200


async def _version_is(s, version: int) -> bool:
    return s.authz.decider.version == version


def _browser(client):
    import httpx

    return httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url))
