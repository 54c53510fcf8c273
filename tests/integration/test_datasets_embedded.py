"""Embedded mode end to end: `palisade datasets create --wait` with a real Celery worker over the SQLite broker.

Planted PII of every covered type is gone from every stored shard, and no planted value appears anywhere in the
data folder (database, broker, shards, uploads); a malformed file fails with its line number and leaves nothing
behind; deleting removes the shards and keeps the audit trail (which still verifies).
"""

from __future__ import annotations

import json

import pytest

from tests.support.server import celery_worker, cli, embedded_env
from tests.unit.test_datasets_pii import PLANTED, TEXT
from tests.unit.test_datasets_pipeline import LONG, chat, prose, write_jsonl


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    env, data = embedded_env(tmp_path_factory, "ds-embedded")
    with celery_worker(env, data.parent / "worker.log"):
        yield env, data


def show(env, version_id):
    return json.loads(cli(env, "datasets", "show", version_id).stdout.strip().splitlines()[-1])


def test_create_wait_ready_and_no_plaintext_anywhere(embedded, tmp_path):
    env, data = embedded
    rows = [chat(TEXT, "Danke! " + LONG)] + [chat(prose(i), prose(500 + i)) for i in range(30)]
    rows += [chat(prose(2), prose(502))]  # exact duplicate
    src = write_jsonl(tmp_path / "support.jsonl", rows)
    proc = cli(env, "datasets", "create", "--name", "support-chats", "--file", str(src), "--pii", "pseudonymise",
               "--purpose", "assistant fine-tuning", "--legal-basis", "legitimate interest", "--wait", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version_id = proc.stdout.strip().splitlines()[-1]
    assert len(version_id) == 32
    card = show(env, version_id)
    assert card["status"] == "ready" and card["id"] == version_id
    assert card["records_in"] == len(rows) and card["records_out"] == len(rows) - 1
    assert {s["name"] for s in card["stages"]} >= {"ingest", "normalise", "pii", "filters", "exact_dedup",
                                                   "near_dedup"}
    assert all(card["pii"][t] >= 1 for t in PLANTED), card["pii"]
    assert card["digest"].startswith("sha256:") and card["purpose"] == "assistant fine-tuning"
    listed = json.loads(cli(env, "datasets", "list").stdout.strip().splitlines()[-1])
    assert version_id in [d["id"] for d in listed["datasets"]]

    needles = [v.encode() for v in PLANTED.values()] + [b"library extension", b"j.doe@example.com"]
    for path in data.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for needle in needles:
                assert needle not in blob, (path, needle)
    assert not any((data / "dataset-uploads").iterdir())  # the encrypted upload is gone too

    deleted = json.loads(cli(env, "datasets", "delete", version_id).stdout.strip().splitlines()[-1])
    assert deleted["deleted"] is True
    assert not (data / "datasets" / version_id).exists()
    verify = cli(env, "audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_malformed_file_fails_with_line_numbers_and_leaves_nothing(embedded, tmp_path):
    env, data = embedded
    src = write_jsonl(tmp_path / "bad.jsonl", [chat(prose(1), prose(2)), chat(prose(3), prose(4)), "{oops",
                                               chat(prose(5), prose(6))])
    proc = cli(env, "datasets", "create", "--name", "bad", "--file", str(src), "--wait", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    version_id = proc.stdout.strip().splitlines()[-1]
    card = show(env, version_id)
    assert card["status"] == "failed" and "line 3" in card["error"]
    assert not (data / "datasets" / version_id).exists()
    assert not any((data / "dataset-uploads").iterdir())
    # the same file with --on-error skip is processed, the line reported in the card
    proc = cli(env, "datasets", "create", "--name", "bad", "--file", str(src), "--on-error", "skip", "--wait",
               check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = show(env, proc.stdout.strip().splitlines()[-1])
    assert card["card"]["ingest_errors"][0]["line"] == 3 and card["records_out"] == 3
    assert card["parent_id"] == version_id and card["number"] == 2


def test_folder_of_text_files(embedded, tmp_path):
    env, _ = embedded
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / f"doc{i}.md").write_text(f"# Title {i}\n\n{prose(900 + i)}\n")
    (folder / "sub" / "extra.txt").write_text(prose(999))
    config = tmp_path / "pipeline.yaml"
    config.write_text("parallel_after: 2\nquality:\n  min_words: 3\n")  # worker processes inside the Celery job
    proc = cli(env, "datasets", "create", "--name", "docs", "--file", str(folder), "--format", "text",
               "--config", str(config), "--wait", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = show(env, proc.stdout.strip().splitlines()[-1])
    assert card["records_in"] == 6 and card["card"]["format"] == "text"
    assert card["card"]["config"]["parallel_after"] == 2 and card["card"]["config"]["workers"] >= 1
