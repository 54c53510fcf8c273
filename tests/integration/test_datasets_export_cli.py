"""Embedded mode, the CLI end to end with a real Celery worker over the SQLite broker: ``datasets create
--label-field`` plus tag rules from ``--config``; ``datasets show`` prints tag and label counts; ``datasets
export --split validation --label X --out FILE`` writes the evaluation set (0600) and prints its count; a
deleted version cannot be exported."""

from __future__ import annotations

import json

import pytest

from tests.support.server import celery_worker, cli, embedded_env
from tests.unit.test_datasets_pipeline import prose


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    env, data = embedded_env(tmp_path_factory, "ds-export")
    with celery_worker(env, data.parent / "export-worker.log"):
        yield env, data


def last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_show_counts_and_export_by_label(embedded, tmp_path):
    env, _ = embedded
    rows = [{"text": prose(i) + (" The invoice was wrong." if i % 4 == 0 else ""),
             "intent": "billing" if i % 2 else "other"} for i in range(40)]
    src = tmp_path / "tickets.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps({"tags": {"topics": {"money": ["invoice"]},
                                           "labels": [{"label": "complaint", "pattern": "was wrong"}]}}))
    proc = cli(env, "datasets", "create", "--name", "tickets", "--file", str(src), "--format", "text",
               "--label-field", "intent", "--config", str(config), "--validation-fraction", "0.3", "--wait",
               check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version_id = proc.stdout.strip().splitlines()[-1]

    shown = last_json(cli(env, "datasets", "show", version_id))
    assert shown["labels"] == {"billing": 20, "other": 20, "complaint": 10}
    assert shown["tags"]["topic"] == {"money": 10} and shown["tags"]["source"] == {"tickets.jsonl": 40}
    assert shown["tags"]["language"] == {"en": 40}
    val_billing = shown["card"]["labels_by_split"]["validation"]["billing"]
    assert 0 < val_billing < 20
    out = tmp_path / "eval" / "billing.jsonl"
    res = last_json(cli(env, "datasets", "export", version_id, "--split", "validation", "--label", "billing",
                        "--out", str(out)))
    assert res == {"path": str(out), "records": val_billing}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == val_billing and all("billing" in r["meta"]["labels"] for r in lines)
    assert out.stat().st_mode & 0o777 == 0o600

    cli(env, "datasets", "delete", version_id)
    refused = cli(env, "datasets", "export", version_id, "--label", "billing", "--out", str(tmp_path / "x.jsonl"),
                  check=False)
    assert refused.returncode != 0 and "deleted" in refused.stderr
    assert not (tmp_path / "x.jsonl").exists()

