"""Embedded mode with a real Celery worker (SQLite broker and result backend): a version with
``chunk_records`` is split into chunks prepared in parallel by the worker's processes (a chord), and ends
``ready`` with the same counts a single pass gives; the sealed chunks are gone afterwards."""

from __future__ import annotations

import json

import pytest

from tests.support.server import celery_worker, cli, embedded_env
from tests.unit.test_datasets_pii import PLANTED, TEXT
from tests.unit.test_datasets_pipeline import LONG, chat, prose, write_jsonl


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    env, data = embedded_env(tmp_path_factory, "ds-chord")
    with celery_worker(env, data.parent / "chord-worker.log"):
        yield env, data


def test_chunked_version_through_a_chord(embedded, tmp_path):
    env, data = embedded
    rows = [chat(TEXT, "Danke! " + LONG)] + [chat(prose(i), prose(500 + i)) for i in range(30)]
    rows += [chat(prose(2), prose(502))]  # an exact duplicate in another chunk
    src = write_jsonl(tmp_path / "big.jsonl", rows)
    config = tmp_path / "chunks.json"
    config.write_text(json.dumps({"chunk_records": 8}))
    proc = cli(env, "datasets", "create", "--name", "chunked", "--file", str(src), "--config", str(config),
               "--wait", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version_id = proc.stdout.strip().splitlines()[-1]
    shown = json.loads(cli(env, "datasets", "show", version_id).stdout.strip().splitlines()[-1])
    assert shown["status"] == "ready" and shown["card"]["chunks"] == 4
    assert shown["records_in"] == len(rows) and shown["records_out"] == len(rows) - 1
    stages = {s["name"]: s for s in shown["stages"]}
    assert stages["exact_dedup"]["removed"] == {"duplicate": 1}
    assert all(shown["pii"][t] >= 1 for t in PLANTED)
    assert not (data / "datasets" / version_id / "chunks").exists()
    for path in data.rglob("*"):
        if path.is_file():
            assert not [v for v in PLANTED.values() if v.encode() in path.read_bytes()], path
