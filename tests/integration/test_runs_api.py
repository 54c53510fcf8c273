"""The runs API through the real HTTP app (embedded SQLite): people's sessions with CSRF, step-up MFA for
approval, four-eyes (403 with a reason), others' runs 404, cancel, the SSE event stream, audit records."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import create_engine, select

from gateway.app import services_of
from gateway.db.audit import AuditRecord
from tests.integration import test_identity_helpers as helpers
from tests.integration.test_identity_helpers import assert_error_shape, gateway_client, login, make_person
from tests.support.fake_upstreams import fake_upstream
from tests.support.training_data import insert_dataset_versions

pytestmark = pytest.mark.asyncio(loop_scope="session")


def migrate_with_datasets(settings) -> None:
    """Migrations, then two dataset versions (approved and rejected) in the datasets domain's tables."""
    from gateway.db.migrate import upgrade

    upgrade(settings)
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        insert_dataset_versions(conn, {"dsapproved": "approved", "dsrejected": "rejected"})
    engine.dispose()


@pytest.fixture(scope="module")
async def gw(tmp_path_factory):
    with fake_upstream("ok", "openai") as url:
        settings = helpers.identity_settings(tmp_path_factory.mktemp("runs-api"), url)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(helpers, "upgrade", migrate_with_datasets)
            async with gateway_client(settings) as (client, app):
                yield client, app


async def session_of(gw, *roles: str):
    client, app = gw
    person = await make_person(app, *roles)
    other = httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url))
    csrf = await login(other, person)
    return other, person, {"X-CSRF-Token": csrf}


BODY = {"dataset": "dsapproved", "method": "sft-lora", "base": "preset:tiny",
        "config": {"max_steps": 5, "learning_rate": 1e-4}, "gates": [{"metric": "eval_loss", "op": "<=",
                                                                       "threshold": 5.0}]}


async def test_request_approve_cancel_and_stream(gw):
    _client, app = gw
    alice, alice_p, ha = await session_of(gw, "ml_engineer", "approver")  # may approve others' runs, not her own
    bob, bob_p, hb = await session_of(gw, "approver")
    carol, _carol_p, hc = await session_of(gw, "ml_engineer")

    assert_error_shape(await alice.post("/admin/runs", json={**BODY, "dataset": "dsrejected"}, headers=ha), 409)
    assert_error_shape(await alice.post("/admin/runs", json={**BODY, "method": "magic"}, headers=ha), 400)
    assert_error_shape(await alice.post("/admin/runs", json=BODY), 403)  # cookie session without CSRF
    r = await alice.post("/admin/runs", json=BODY, headers=ha)
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "awaiting_approval" and run["metrics"]["loss"] == [] and run["candidate_version"] is None
    assert run["gates"][0]["metric"] == "eval_loss" and run["gates"][0]["passed"] is None

    # others' runs are invisible to a non-admin
    assert_error_shape(await carol.get(f"/admin/runs/{run['id']}"), 404)
    assert all(r["id"] != run["id"] for r in (await carol.get("/admin/runs")).json()["runs"])

    # four eyes: the requester cannot approve, even with fresh MFA
    assert (await alice.post("/auth/step-up", json={"code": alice_p.next_code()}, headers=ha)).status_code == 200
    e = assert_error_shape(await alice.post(f"/admin/runs/{run['id']}/approve", headers=ha), 403)
    assert "requester" in e["message"]
    # the approver's MFA is fresh (TOTP at login, or POST /auth/step-up; a stale one is refused: see
    # test_training_runs.py::test_approval_rules); a digest other than the request's is refused
    assert (await bob.post("/auth/step-up", json={"code": bob_p.next_code()}, headers=hb)).status_code == 200
    e = assert_error_shape(await bob.post(f"/admin/runs/{run['id']}/approve", json={"digest": "0" * 64},
                                          headers=hb), 409)
    r = await bob.post(f"/admin/runs/{run['id']}/approve", json={"digest": run["request_digest"]}, headers=hb)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["approved_by"] == f"user:{bob_p.id}"
    assert (await bob.get(f"/admin/runs/{run['id']}")).json()["status"] == "queued"  # approvers read runs
    # an ML engineer cannot approve at all (policy), and carol cannot cancel alice's run
    assert_error_shape(await carol.post(f"/admin/runs/{run['id']}/approve", headers=hc), 403)
    assert_error_shape(await carol.post(f"/admin/runs/{run['id']}/cancel", headers=hc), 404)

    r = await alice.post(f"/admin/runs/{run['id']}/cancel", headers=ha)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert_error_shape(await alice.post(f"/admin/runs/{run['id']}/cancel", headers=ha), 409)

    stream = await alice.get(f"/admin/runs/{run['id']}/events")
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.strip().endswith('data: {"type":"status","status":"cancelled"}')

    async with services_of(app).db.session() as s:
        tags = [r.tag for r in (await s.scalars(select(AuditRecord).where(
            AuditRecord.target == f"run:{run['id']}").order_by(AuditRecord.seq))).all()]
    assert tags == ["training:run:create", "training:run:approve", "training:run:cancel"]
    for c in (alice, bob, carol):
        await c.aclose()
