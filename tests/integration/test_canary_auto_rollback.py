"""A canary with thresholds is rolled back on its own: its version is served by a fake upstream that fails
(500s), production by one that answers. Once the canary has ``min_requests`` in the window and its error rate is
past the limit, the catalog's watcher ends it (all traffic back to production), the audit trail holds the
numbers, and later requests all go to production. Never a promotion.

The same through a real ``palisade serve`` process: thresholds set with ``PUT /admin/aliases/chat/canary``, the
numbers read with ``GET /admin/aliases/chat/canary`` (an app key is refused), requests through
``/v1/chat/completions``.

Real (SQLite) registry and audit chain, real HTTP to the fake upstreams; about 10 s + 20 s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from gateway.audit.chain import AuditChain
from gateway.audit.events import Tag
from gateway.crypto import open_keyring
from gateway.db.migrate import upgrade
from gateway.db.registry import AliasHistory, ModelVersion
from gateway.db.session import Database
from gateway.errors import ApiError
from gateway.inference.base import GenerationRequest, SamplingParams
from gateway.inference.router import Router
from gateway.models.canary import CanaryThresholds
from gateway.models.catalog import ModelCatalog
from gateway.models.spec import ModelSpec
from gateway.settings import Settings
from tests.integration.test_model_registry import person, settle, tags
from tests.support.fake_upstreams import serve_fake
from tests.support.people import login
from tests.support.server import GatewayProcess, base_env, create_key

# the fixtures' tasks (audit writer, router health) live on the session loop: run the test on it too
on_session_loop = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def replica(tmp_path: Path):
    # health checks rarely (the failing canary must keep being routed to until its numbers decide), watch often
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}", health_interval_s=60,
                        canary_check_s=0.2, canary_window_s=60)
    await asyncio.to_thread(upgrade, settings)
    db = Database(settings)
    chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
    router = Router(settings)
    catalog = ModelCatalog(settings, db, router, chain)
    try:
        yield db, router, catalog
    finally:
        await catalog.close()
        await router.close()
        await chain.close()
        await db.close()


async def call(router: Router, i: int) -> tuple[str, str | None]:
    """One request as the inference service routes it: the canary rule picks the pool by the request id."""
    target = router.route_for("chat", principal="key:app", key=f"req-{i}")
    req = GenerationRequest(f"req-{i}", SamplingParams(max_tokens=4, temperature=0.0), prompt="Hello")
    try:
        return "ok", (await router.generate(target, req)).model_version
    except ApiError as exc:
        return f"error:{exc.status_code}", None


@on_session_loop
async def test_failing_canary_is_rolled_back_automatically(replica) -> None:
    db, router, catalog = replica
    registry = catalog.registry
    with serve_fake("ok", "openai") as good, serve_fake("error500", "openai") as bad:
        await catalog.seed([
            ModelSpec(alias="chat", backend="openai", url=good.url, upstream_model="m"),
            ModelSpec(alias="chat-next", backend="openai", url=bad.url, upstream_model="m"),
        ])
        await router.start()
        catalog.start_loading()
        await catalog.wait_loaded()
        states = {st.name: st.version_id for st in await registry.serving_state()}
        production, candidate = states["chat"], states["chat-next"]

        limits = CanaryThresholds(max_error_rate=0.2, max_p99_ratio=3.0, min_requests=20)
        view = await registry.set_canary(person("alice"), "chat", candidate, percent=50, thresholds=limits)
        assert view.thresholds == limits
        await catalog.refresh()
        await settle(catalog)
        assert router.canary("chat") is not None and router.version("chat@canary") == candidate
        report = await catalog.canary_report("chat")
        assert report.verdict == "collecting" and report.thresholds == limits and report.percent == 50

        # traffic until the watcher (every 0.2 s) ends the canary; before that about half the requests fail
        outcomes: list[tuple[str, str | None]] = []
        deadline = time.monotonic() + 30
        while router.canary("chat") is not None:
            assert time.monotonic() < deadline, "the canary was not rolled back"
            outcomes.append(await call(router, len(outcomes)))
            if len(outcomes) % 10 == 0:
                await asyncio.sleep(0.05)
        failed = [o for o in outcomes if o[0] != "ok"]
        assert len(outcomes) >= 20 and failed and all(o[0] == "error:502" for o in failed)
        assert {v for s, v in outcomes if s == "ok"} == {production}

        # the registry ended it (all traffic back to production) and the trail says why, with both versions' numbers
        states = {st.name: st for st in await registry.serving_state()}
        assert states["chat@canary"].version_id is None and states["chat"].version_id == production
        (event,) = [d for t, d in await tags(db) if t == Tag.MODEL_CANARY_AUTO_ROLLBACK]
        assert event["version"] == candidate and "error rate" in event["reason"]
        assert event["canary"]["requests"] >= 20 and event["canary"]["error_rate"] > 0.2
        assert event["production"]["version"] == production and event["production"]["errors"] == 0
        assert event["thresholds"]["max_error_rate"] == 0.2
        async with db.session() as s:
            actions = list((await s.execute(select(AliasHistory.action).where(
                AliasHistory.alias == "chat@canary"))).scalars())
        assert actions == ["canary", "canary-auto-rollback"]
        async with db.session() as s:
            marked = await s.get(ModelVersion, candidate)
        # marked with why; still in production only because it also serves its own alias chat-next here
        assert marked.status == "production" and "canary rolled back automatically" in marked.status_reason
        assert "error rate" in marked.status_reason
        # another replica deciding the same a moment later finds it already ended: one rollback, one record
        assert not await registry.end_canary_automatically("chat", candidate, reason="late", numbers={})

        # every later request is served by production
        later = [await call(router, 10_000 + i) for i in range(40)]
        assert later == [("ok", production)] * 40
        report = await catalog.canary_report("chat")
        assert report.verdict == "no-canary" and report.production.version == production
        assert report.production.requests >= 40 and report.production.errors == 0
        assert not any(t == Tag.MODEL_PROMOTE for t, _ in await tags(db))  # rolled back, never promoted


def test_thresholds_and_numbers_over_http(tmp_path: Path) -> None:
    with serve_fake("ok", "openai") as good, serve_fake("error500", "openai") as bad:
        models = tmp_path / "models.yaml"
        models.write_text(f"""
models:
  - alias: chat
    backend: openai
    url: {good.url}
    upstream_model: m
  - alias: chat-next
    backend: openai
    url: {bad.url}
    upstream_model: m
""")
        env = base_env(tmp_path, PALISADE_MODELS_FILE=str(models), PALISADE_HEALTH_INTERVAL_S="60",
                       PALISADE_CANARY_CHECK_S="0.5", PALISADE_LOGIN_SLOWDOWN_AFTER="1000")
        key = create_key(env, "canary-app")
        gw = GatewayProcess(env, tmp_path / "gw.log").start(ready=False)
        try:
            approver = login(gw, env, "approver")
            shown = httpx.get(f"{gw.url}/admin/models/chat-next", headers=approver, timeout=10).json()
            candidate = shown["aliases"][0]["version"]
            r = httpx.put(f"{gw.url}/admin/aliases/chat/canary", headers=approver, timeout=30, json={
                "version": candidate, "percent": 50, "max_error_rate": 0.1, "min_requests": 10})
            assert r.status_code == 200, r.text
            assert r.json()["thresholds"] == {"max_error_rate": 0.1, "max_p99_ratio": None, "min_requests": 10,
                                              "auto": "rollback"}
            bad_body = httpx.put(f"{gw.url}/admin/aliases/chat/canary", headers=approver, timeout=10,
                                 json={"version": candidate, "percent": 50, "max_error_rate": 2})
            assert bad_body.status_code == 400, bad_body.text
            app = {"Authorization": f"Bearer {key}"}
            assert httpx.get(f"{gw.url}/admin/aliases/chat/canary", headers=app, timeout=10).status_code == 403

            statuses: list[int] = []
            deadline = time.monotonic() + 40
            while True:
                report = httpx.get(f"{gw.url}/admin/aliases/chat/canary", headers=approver, timeout=10).json()
                if report["verdict"] == "no-canary":
                    break
                assert time.monotonic() < deadline, (report, gw.log()[-3000:])
                assert report["thresholds"]["max_error_rate"] == 0.1 and report["canary"]["version"] == candidate
                for _ in range(5):
                    r = httpx.post(f"{gw.url}/v1/chat/completions", headers=app, timeout=30, json={
                        "model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
                    statuses.append(r.status_code)
            assert 502 in statuses or 503 in statuses, statuses
            assert report["production"]["requests"] > 0 and report["canary"] is None
            for _ in range(20):
                r = httpx.post(f"{gw.url}/v1/chat/completions", headers=app, timeout=30, json={
                    "model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
                assert r.status_code == 200, r.text
            history = httpx.get(f"{gw.url}/admin/models/chat", headers=approver, timeout=10).json()
            assert all(a["version"] != candidate for a in history["aliases"] if a["alias"] == "chat")
        finally:
            gw.stop()
