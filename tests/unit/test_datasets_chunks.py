"""The chunked path (what the Celery chord runs: split -> prepare each chunk -> finish) gives the same version as
a single pass: same stage counts, PII counts, languages, splits and stored records; chunks are sealed (no
planted plaintext in the store) and gone afterwards."""

from __future__ import annotations

import json

from gateway.datasets.shards import KeyringSealer, iter_split
from gateway.datasets.storage import LocalStore
from tests.unit.test_datasets_pii import PLANTED, TEXT
from tests.unit.test_datasets_pipeline import LONG, chat, keyring, prose, write_jsonl  # noqa: F401 - fixture
from trainer.datasets import chunks
from trainer.datasets.pii import hmac_pseudonymiser
from trainer.datasets.pipeline import PipelineConfig, run_pipeline


def test_chunked_equals_single_pass(tmp_path, keyring):  # noqa: F811
    rows = [chat(TEXT, "Danke! " + LONG)] + [chat(prose(i), prose(500 + i)) for i in range(25)]
    rows += [chat(prose(2), prose(502)), chat("ok", "fine"), "{broken", chat(TEXT, "Again: " + LONG)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    raw = {"ingest": {"on_error": "skip"}, "pii": "pseudonymise", "augment": ["counterfactual"],
           "validation_fraction": 0.2}
    pseudonym = hmac_pseudonymiser(b"k" * 32)
    single = run_pipeline(src, PipelineConfig.from_dict(raw), store=LocalStore(tmp_path / "a"),
                          sealer=KeyringSealer(keyring, "v1"), version_id="v1", pseudonym=pseudonym)

    config = PipelineConfig.from_dict({**raw, "chunk_records": 7})
    store, sealer = LocalStore(tmp_path / "b"), KeyringSealer(keyring, "v1")
    n, report = chunks.split_input(src, config, store, sealer, "v1")
    assert n == 5 and report["skipped"] == 1
    # the chunks are sealed: no planted value in the store before they are prepared
    for path in (tmp_path / "b").rglob("*"):
        if path.is_file():
            assert not [v for v in PLANTED.values() if v.encode() in path.read_bytes()], path
    counters = [chunks.prepare_chunk(config, store, sealer, "v1", i, pseudonym) for i in reversed(range(n))]
    result = chunks.finish("in.jsonl", config, store, sealer, "v1", n, json.loads(json.dumps(report)), counters,
                           pseudonym=pseudonym)
    for key in ("records_in", "records_out", "splits", "stages", "pii", "languages", "duplicates", "ingest_errors",
                "augmentation", "labels", "tags"):
        assert result.card[key] == single.card[key], key
    assert result.card["chunks"] == 5
    for split in ("train", "validation"):
        assert list(iter_split(store, sealer, result.manifest, split)) == \
            list(iter_split(LocalStore(tmp_path / "a"), sealer, single.manifest, split))
    assert not list(store.list("v1/chunks"))


def test_missing_chunk_fails_and_leaves_nothing(tmp_path, keyring):  # noqa: F811
    src = write_jsonl(tmp_path / "in.jsonl", [chat(prose(i), prose(100 + i)) for i in range(6)])
    config = PipelineConfig.from_dict({"chunk_records": 2})
    store, sealer = LocalStore(tmp_path / "s"), KeyringSealer(keyring, "v2")
    n, report = chunks.split_input(src, config, store, sealer, "v2")
    counters = [chunks.prepare_chunk(config, store, sealer, "v2", i, None) for i in range(n - 1)]
    try:
        chunks.finish("in.jsonl", config, store, sealer, "v2", n, report, counters)
    except RuntimeError as exc:
        assert "chunks missing" in str(exc) and not list(store.list("v2"))
    else:
        raise AssertionError("a missing chunk must fail the version")
