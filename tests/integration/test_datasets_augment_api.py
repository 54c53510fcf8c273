"""Back-translation, synthetic rows, tags/labels and evaluation-set export through the real HTTP app in
production mode (Postgres, Redis db 4 as Celery broker, a real worker process), the served model being the fake
OpenAI upstream: every model call goes through the inference entry point as the registrant (audited, origin
"task"); added rows are train-only, marked and PII-scrubbed; the export selects by label and is audited."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.app import services_of
from tests.integration.test_datasets_api import db_text, session_client, wait_status
from tests.integration.test_identity_helpers import assert_error_shape, gateway_client, identity_settings
from tests.support.fake_upstreams import serve_fake
from tests.support.server import ROOT, base_env
from tests.unit.test_datasets_pipeline import prose

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.postgres, pytest.mark.redis]
REDIS_DB4 = "redis://127.0.0.1:6379/4"


@pytest.fixture(scope="module")
async def gw(tmp_path_factory, pg_url):
    import redis

    redis.Redis.from_url(REDIS_DB4).flushdb()
    data = tmp_path_factory.mktemp("ds-augment")
    with serve_fake("ok", "openai") as fake:
        settings = identity_settings(data, fake.url, database_url=pg_url, redis_url=REDIS_DB4,
                                     celery_broker_url=REDIS_DB4, celery_result_backend=REDIS_DB4)
        async with gateway_client(settings) as (client, app):
            env = base_env(data, PALISADE_DATABASE_URL=pg_url, PALISADE_REDIS_URL=REDIS_DB4,
                           PALISADE_CELERY_BROKER_URL=REDIS_DB4, PALISADE_CELERY_RESULT_BACKEND=REDIS_DB4,
                           PALISADE_MODELS_FILE=str(settings.models_file))
            log = open(data.parent / f"{data.name}-worker.log", "wb")  # noqa: SIM115
            worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu"],
                                      env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            try:
                yield client, app, data
            finally:
                worker.terminate()
                worker.wait(timeout=30)
                log.close()


async def test_backtranslate_synthetic_tags_and_export(gw, tmp_path):
    client, app, _ = gw
    engineer, eng = await session_client(app, client, "ml_engineer")
    rows = [{"prompt": prose(40 + i) + " Reach me at anna.schmidt@example.com", "completion": prose(80 + i),
             "intent": "refund" if i == 0 else "billing"} for i in range(8)]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    config = {"synthetic": {"min_per_label": 2, "seeds": 1,
                            "templates": [{"label": "health", "instruction": "Write a question a patient asks.",
                                           "count": 1}]},
              "tags": {"topics": {"family": ["children", "parents"]}}}
    r = await eng.post("/admin/datasets", files={"file": ("tickets.jsonl", body, "application/jsonl")},
                       data={"name": "bt-syn", "augment": "backtranslate,synthetic", "augment-model": "mock",
                             "label-field": "intent", "validation_fraction": "0.25", "config": json.dumps(config)})
    assert r.status_code == 201, r.text
    version_id = r.json()["id"]
    view = await wait_status(eng, version_id)
    assert view["status"] == "ready", view
    card = view["card"]
    train_n, val_n = card["splits"]["train"], card["splits"]["validation"]
    added = card["augmentation"]["added"]
    originals_train = train_n - sum(added.values())
    assert not card["augmentation"]["failed_calls"], card["augmentation"]
    assert added["backtranslation"] == originals_train and originals_train + val_n == len(rows)
    refund_train = card["labels_by_split"]["train"].get("refund", 0)
    # rare: refund (1 row, in train or not at all) gets rows up to 2; health comes from its template
    assert added["synthetic"] == (1 if refund_train else 0) + 1
    assert card["labels"]["health"] == 1 and card["tags"]["source"]["tickets.jsonl"] >= len(rows)
    assert card["tags"]["language"]["en"] >= len(rows) and card["tags"]["topic"].get("family", 0) >= 1
    assert card["augmentation"]["pivot"] == "de"

    # every call went through the inference service as the registrant: 2 per back-translation, 2 per synthetic
    # prompt/completion row
    calls = json.loads(db_text(services_of(app).settings.database_url,
                               "SELECT actor, details FROM audit_records WHERE tag = 'inference:request:complete'"))
    mine = [json.loads(d) if isinstance(d, str) else d for actor, d in calls if actor == f"user:{engineer.id}"]
    assert len(mine) == 2 * added["backtranslation"] + 2 * added["synthetic"]
    assert all(d.get("origin") == "task" for d in mine)

    # evaluation sets: the API answers JSONL; the service writes a private file; both audited
    r = await eng.get(f"/admin/datasets/{version_id}/export", params={"split": "train", "label": "billing"})
    assert r.status_code == 200, r.text
    got = [json.loads(line) for line in r.text.splitlines()]
    assert got and all("billing" in g["meta"]["labels"] and not g["meta"].get("synthetic") for g in got)
    # each collected billing row has one back-translation (synthetic: left out by default)
    assert len(got) * 2 == card["labels_by_split"]["train"]["billing"]
    r = await eng.get(f"/admin/datasets/{version_id}/export",
                      params={"split": "train", "label": "health", "include_synthetic": "true"})
    health = [json.loads(line) for line in r.text.splitlines()]
    assert len(health) == 1 and health[0]["meta"]["augmented"] == "synthetic"
    assert "anna.schmidt@example.com" not in r.text
    text = json.dumps(got)
    assert "anna.schmidt@example.com" not in text  # scrubbed like everything stored

    from gateway.context import RequestContext

    out = tmp_path / "val.jsonl"
    count, _ = await services_of(app).datasets.export(RequestContext.cli(), version_id, out, split="validation",
                                                      tag="language=en")
    assert count == val_n and len(out.read_text().splitlines()) == val_n
    tags = db_text(services_of(app).settings.database_url, "SELECT tag FROM audit_records")
    assert tags.count("dataset:version:export") == 3

    _, other = await session_client(app, client, "ml_engineer")
    assert_error_shape(await other.get(f"/admin/datasets/{version_id}/export"), 404)  # BOLA
    assert_error_shape(await eng.get(f"/admin/datasets/{version_id}/export", params={"split": "test"}), 400)
