"""Datasets through the real HTTP app in production mode: Postgres, Redis (db 10) as Celery broker, and a real
worker process. Create (multipart upload) -> ready -> four-eyes approval with fresh MFA, bound to the digest;
BOLA (others' versions are 404); server-side import refuses traversal and symlinks; no planted plaintext in the
data folder or the database; deletion removes the shards and keeps the audit trail; training reads only
approved versions.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import psycopg
import pytest
from sqlalchemy import update

from gateway.app import services_of
from gateway.datasets.service import iter_records
from gateway.db.base import utcnow
from gateway.db.identity import UserSession
from gateway.errors import Conflict
from tests.integration.test_identity_helpers import (
    PASSWORD,
    Person,
    assert_error_shape,
    gateway_client,
    identity_settings,
    login,
    seed_of,
)
from tests.support.fake_upstreams import serve_fake
from tests.support.server import ROOT, base_env
from tests.unit.test_datasets_pii import PLANTED, TEXT
from tests.unit.test_datasets_pipeline import LONG, chat, prose

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.postgres, pytest.mark.redis]
REDIS_DB10 = "redis://127.0.0.1:6379/10"
ROWS = [chat(TEXT, "Danke! " + LONG)] + [chat(prose(i), prose(700 + i)) for i in range(24)]
BODY = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode()


@pytest.fixture(scope="module")
async def gw(tmp_path_factory, pg_url):
    import redis

    redis.Redis.from_url(REDIS_DB10).flushdb()
    data = tmp_path_factory.mktemp("ds-api")
    imports = data / "imports"
    (imports / "ok").mkdir(parents=True)
    (imports / "ok" / "notes.txt").write_text(prose(1) + "\n\n" + prose(2) + "\n")
    outside = data / "outside.txt"
    outside.write_text(prose(3))
    (imports / "escape.txt").symlink_to(outside)
    upstream = serve_fake("ok", "openai")
    fake = upstream.__enter__()
    settings = identity_settings(data, fake.url, database_url=pg_url, redis_url=REDIS_DB10,
                                 celery_broker_url=REDIS_DB10, celery_result_backend=REDIS_DB10,
                                 dataset_import_dir=imports)
    async with gateway_client(settings) as (client, app):
        env = base_env(data, PALISADE_DATABASE_URL=pg_url, PALISADE_REDIS_URL=REDIS_DB10,
                       PALISADE_CELERY_BROKER_URL=REDIS_DB10, PALISADE_CELERY_RESULT_BACKEND=REDIS_DB10,
                       PALISADE_MODELS_FILE=str(settings.models_file), PALISADE_DATASET_IMPORT_DIR=str(imports))
        log = open(data.parent / f"{data.name}-worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu"], env=env,
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield client, app, data
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            log.close()
            upstream.__exit__(None, None, None)


_count = [0]


async def make_person(app, *roles):
    _count[0] += 1
    name = f"ds{_count[0]}_{int(time.time() * 1000) % 100000}"
    enrol = await services_of(app).identity.users.create(name, PASSWORD, roles=list(roles), attributes={})
    return Person(enrol.user_id, name, seed_of(enrol.otpauth_uri), enrol.recovery_codes)


async def session_client(app, client, *roles):
    person = await make_person(app, *roles)
    other = httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url))
    csrf = await login(other, person)
    other.headers["X-CSRF-Token"] = csrf
    return person, other


async def wait_status(client, version_id, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = (await client.get(f"/admin/datasets/{version_id}")).json()
        if body["status"] != "processing":
            return body
        await asyncio.sleep(0.5)
    raise AssertionError(f"still processing: {body}")


async def test_create_ready_approve_and_governance(gw):
    client, app, data = gw
    engineer, eng = await session_client(app, client, "ml_engineer", "approver")
    _, other = await session_client(app, client, "ml_engineer")
    approver, appr = await session_client(app, client, "approver")

    r = await eng.post("/admin/datasets", files={"file": ("support.jsonl", BODY, "application/jsonl")},
                       data={"name": "api-chats", "pii": "mask", "purpose": "support assistant",
                             "legal_basis": "contract", "classification": "confidential"})
    assert r.status_code == 201, r.text
    version_id = r.json()["id"]
    assert r.json()["status"] == "processing" and r.json()["owner"] == f"user:{engineer.id}"
    card = await wait_status(eng, version_id)
    assert card["status"] == "ready", card
    assert card["records_in"] == len(ROWS) and card["records_out"] == len(ROWS)
    assert all(card["pii"][t] >= 1 for t in PLANTED)
    assert [s["name"] for s in card["stages"]][:3] == ["ingest", "normalise", "pii"]

    # BOLA: another engineer sees neither the version nor it in the list
    assert_error_shape(await other.get(f"/admin/datasets/{version_id}"), 404)
    assert version_id not in [d["id"] for d in (await other.get("/admin/datasets")).json()["datasets"]]
    assert_error_shape(await other.delete(f"/admin/datasets/{version_id}"), 404)
    # an engineer without the approver role is refused by policy; the registrant by the four-eyes rule
    assert_error_shape(await other.post(f"/admin/datasets/{version_id}/approve", json={}), (403, 404))
    e = assert_error_shape(await eng.post(f"/admin/datasets/{version_id}/approve", json={"reason": "mine"}), 403)
    assert e["code"] == "four_eyes" and "registered" in e["message"]
    # training cannot use it yet
    with pytest.raises(Conflict):
        await iter_records(services_of(app).datasets, version_id)

    # the approver: stale MFA -> 403; after step-up, a wrong digest -> 409; the right one -> approved
    async with services_of(app).db.session() as s:
        await s.execute(update(UserSession).where(UserSession.user_id == approver.id)
                        .values(mfa_at=utcnow() - timedelta(minutes=6)))
    e = assert_error_shape(await appr.post(f"/admin/datasets/{version_id}/approve", json={}), 403)
    assert e["code"] == "mfa_step_up_required"
    assert (await appr.post("/auth/step-up", json={"code": approver.next_code()})).status_code == 200
    assert_error_shape(await appr.post(f"/admin/datasets/{version_id}/approve",
                                       json={"digest": "sha256:" + "0" * 64}), 409)
    sample = await appr.get(f"/admin/datasets/{version_id}/quarantine")
    assert sample.status_code == 200 and sample.json()["id"] == version_id
    # the filler text only ever says "old" (never "young"): the bias report flags the age axis, which blocks
    # approval until the approver waives it with a reason
    assert card["bias_flagged"] and "age" in card["card"]["bias"]["after_augmentation"]["flagged"]
    e = assert_error_shape(await appr.post(f"/admin/datasets/{version_id}/approve",
                                           json={"digest": card["digest"]}), 409)
    assert e["code"] == "bias_flagged"
    r = await appr.post(f"/admin/datasets/{version_id}/approve",
                        json={"digest": card["digest"], "waive_bias": True, "reason": "age words are scenery"})
    assert r.status_code == 200, r.text
    approval = r.json()["approvals"][0]
    assert r.json()["status"] == "approved" and approval["digest"] == card["digest"] and approval["bias_waived"]

    info, records = await iter_records(services_of(app).datasets, version_id, "train")
    rows = list(records)
    assert info["digest"] == card["digest"] and info["status"] == "approved" and len(rows) == info["records"]
    assert all("messages" in row for row in rows)

    # nothing planted in clear: data folder (shards, uploads, keys) and every table in Postgres
    needles = [v.encode() for v in PLANTED.values()] + [b"library extension"]
    for path in data.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "outside.txt" and "imports" not in path.parts:
            blob = path.read_bytes()
            assert not [n for n in needles if n in blob], path
    dump = db_text(services_of(app).settings.database_url)
    assert not [n for n in needles if n.decode() in dump]

    # delete: shards gone, record and audit stay
    r = await eng.delete(f"/admin/datasets/{version_id}")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert not (data / "datasets" / version_id).exists()
    with pytest.raises(Exception):  # noqa: B017 - NotFound: a deleted version cannot be trained on
        await iter_records(services_of(app).datasets, version_id)
    tags = db_text(services_of(app).settings.database_url, "SELECT tag FROM audit_records")
    for tag in ("dataset:version:create", "dataset:version:ready", "dataset:version:decision-denied",
                "dataset:version:approve", "dataset:version:delete", "dataset:quarantine:read",
                "dataset:bias:waive"):
        assert tag in tags


async def test_server_side_import_refuses_traversal_and_symlinks(gw):
    client, app, _ = gw
    _, eng = await session_client(app, client, "ml_engineer")
    for bad in ("../outside.txt", "/etc/passwd", "escape.txt", "ok/../../outside.txt", "missing.txt"):
        e = assert_error_shape(await eng.post("/admin/datasets", json={"name": "imp", "path": bad}), 400)
        assert e["param"] == "path", (bad, e)
    r = await eng.post("/admin/datasets", json={"name": "imp", "path": "ok", "format": "text"})
    assert r.status_code == 201, r.text
    card = await wait_status(eng, r.json()["id"])
    assert card["status"] == "ready" and card["records_in"] == 1


async def test_paraphrase_goes_through_inference_as_the_registrant(gw):
    client, app, _ = gw
    engineer, eng = await session_client(app, client, "ml_engineer")
    rows = "".join(json.dumps({"prompt": prose(40 + i), "completion": prose(80 + i)}) + "\n" for i in range(6))
    r = await eng.post("/admin/datasets", files={"file": ("pc.jsonl", rows.encode(), "application/jsonl")},
                       data={"name": "para", "augment": "paraphrase", "augment_model": "mock",
                             "validation_fraction": "0"})
    assert r.status_code == 201, r.text
    card = await wait_status(eng, r.json()["id"])
    assert card["status"] == "ready", card
    aug = card["card"]["augmentation"]
    assert aug["added"].get("paraphrase") == 6 and aug["model"] == "mock" and not aug["failed_calls"], aug
    assert card["records_out"] == 12
    calls = json.loads(db_text(services_of(app).settings.database_url,
                               "SELECT actor, details FROM audit_records WHERE tag = 'inference:request:complete'"))
    mine = [json.loads(d) if isinstance(d, str) else d for actor, d in calls if actor == f"user:{engineer.id}"]
    assert len(mine) == 6 and all(d.get("origin") == "task" for d in mine)


async def test_apps_and_bad_requests_are_refused(gw):
    client, app, _ = gw
    key = await services_of(app).keys.create("robot")
    h = {"Authorization": f"Bearer {key.key}"}
    assert_error_shape(await client.get("/admin/datasets", headers=h), 403)
    assert_error_shape(await client.post("/admin/datasets", headers=h, json={"name": "x", "path": "ok"}), 403)
    _, eng = await session_client(app, client, "ml_engineer")
    assert_error_shape(await eng.post("/admin/datasets", files={"file": ("a.jsonl", b"{}", "text/plain")},
                                      data={"name": "x", "pii": "shred"}), 400)
    assert_error_shape(await eng.post("/admin/datasets", content=b"--x\r\nbroken", headers={
        "content-type": "multipart/form-data; boundary=x"}), 400)
    assert_error_shape(await eng.get("/admin/datasets/not-an-id"), 404)
    assert not any((services_of(app).settings.data_dir / "dataset-uploads").iterdir())


def db_text(url: str, query: str | None = None) -> str:
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        if query:
            return json.dumps(conn.execute(query).fetchall(), default=str)
        tables = [t for (t,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        out = []
        for t in tables:
            out.append(json.dumps(conn.execute(f'SELECT * FROM "{t}"').fetchall(), default=str))  # noqa: S608
        return "\n".join(out)


os.environ.setdefault("HF_HUB_OFFLINE", "1")
