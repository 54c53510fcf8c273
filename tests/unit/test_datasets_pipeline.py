"""The pipeline end to end on small files: ingest errors with line numbers, filters, dedup counts, bias flags,
augmentation provenance, deterministic splits, encrypted shards with no planted plaintext on disk."""

from __future__ import annotations

import asyncio
import json
import zipfile

import pytest

from gateway.crypto import open_keyring
from gateway.datasets.shards import KeyringSealer, iter_split
from gateway.datasets.storage import LocalStore
from gateway.db.session import Database
from gateway.settings import Settings
from tests.unit.test_datasets_pii import PLANTED, TEXT
from trainer.datasets.bias import BiasReport
from trainer.datasets.dedup import NearDedup
from trainer.datasets.filters import QualityFilter
from trainer.datasets.ingest import IngestConfig, IngestError, IngestReport, read_records
from trainer.datasets.pii import hmac_pseudonymiser
from trainer.datasets.pipeline import PipelineConfig, run_pipeline, sample_quarantine
from trainer.datasets.tokenise import TokeniseConfig, pack, unpack_bytes

LONG = ("The committee reviewed the annual budget in detail and agreed to fund three new community projects "
        "next spring, including a library extension, a youth sports programme and repairs to the old bridge. "
        "Members also discussed how the town could attract more visitors during the winter months, suggested a "
        "small market near the station, and asked the treasurer to prepare a report before the next meeting.")


_WORDS = ("the people of this town often walk along the river in the morning when the light is soft and the "
          "water is calm while children play near the old school and their parents talk about work weather "
          "prices gardens football music books films holidays neighbours dinner recipes travel plans and the "
          "news of the week before they go home to cook and read and sleep early").split()


def prose(i: int, words: int = 45) -> str:
    """A distinct English paragraph per ``i`` (random word order: no two are near duplicates)."""
    import random

    rng = random.Random(i)
    return f"Note {i}: " + " ".join(rng.choice(_WORDS) for _ in range(words)) + "."


@pytest.fixture(scope="module")
def keyring(tmp_path_factory):
    """The real keyring (envelope encryption) over a SQLite file holding only its data-key table."""
    from sqlalchemy import create_engine

    from gateway.db.keyring import DataKey

    data = tmp_path_factory.mktemp("keyring")
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'k.db'}")
    engine = create_engine(settings.database_url)
    DataKey.__table__.create(engine)
    engine.dispose()
    return asyncio.run(open_keyring(settings, Database(settings)))


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


def chat(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


# --- ingest ----------------------------------------------------------------------------------------------------
def test_malformed_lines_are_reported_with_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat("hi there", "hello you"), "{not json", chat("a b", "c d"),
                                              {"messages": "nope"}, {"prompt": "x"}])
    with pytest.raises(IngestError) as err:
        list(read_records(path, IngestConfig(on_error="fail"), IngestReport()))
    assert err.value.errors[0][0] == 2
    report = IngestReport()
    rows = list(read_records(path, IngestConfig(on_error="skip"), report))
    assert len(rows) == 2 and report.format == "chat"
    assert [line for line, _ in report.errors] == [2, 4, 5]


def test_formats(tmp_path):
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "p", "completion": "c"}])
    assert list(read_records(pc, IngestConfig(), IngestReport()))[0]["prompt"] == "p"
    (tmp_path / "t.csv").write_text('id,text\n1,"hello, world"\n2,second\n')
    assert [r["text"] for r in read_records(tmp_path / "t.csv", IngestConfig(), IngestReport())] == [
        "hello, world", "second"]
    (tmp_path / "plain.txt").write_text("first para\nline two\n\nsecond para\n")
    rows = list(read_records(tmp_path / "plain.txt", IngestConfig(), IngestReport()))
    assert [r["meta"]["line"] for r in rows] == [1, 4]
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# A\ntext")
    (folder / "sub" / "b.txt").write_text("b text")
    (folder / "skip.bin").write_bytes(b"\x00")
    assert [r["meta"]["file"] for r in read_records(folder, IngestConfig(), IngestReport())] == ["a.md", "sub/b.txt"]
    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as zf:
        zf.writestr("x.txt", "zip text")
        zf.writestr("y.png", "no")
    assert [r["text"] for r in read_records(tmp_path / "docs.zip", IngestConfig(), IngestReport())] == ["zip text"]


# --- filters, dedup, bias ----------------------------------------------------------------------------------------
def test_filters_keep_and_remove():
    f = QualityFilter()
    assert f.reason(LONG) is None
    assert f.reason("Eine ganz gewöhnliche Nachricht über das Wetter in Berlin und München heute.") is None
    assert f.reason("short") == "too_short"
    assert f.reason("Ceci est une phrase tout à fait normale en français sur le temps qu'il fait.") == "language"
    assert f.reason(" ".join(["buy now"] * 15)) == "top_2gram"
    assert f.reason("### ### ### hello ... world") == "symbol_word_ratio"
    assert f.reason("same line here\nsame line here\nsame line here\nother") == "duplicate_lines"
    assert f.strip_boilerplate("Body text\nAll rights reserved.\nWe use cookies to improve.\nMore") == "Body text\nMore"


def test_near_dedup_clusters():
    near = NearDedup()
    variants = [LONG, LONG.replace("spring", "summer"), LONG + " Thanks.", "Completely different text about cats "
                "sleeping on warm windowsills through the long and quiet afternoon hours of the day."]
    flags = [near.is_duplicate({"text": t}) for t in variants]
    assert flags == [False, True, True, False] and near.clusters == 1


def test_bias_report_flags_planted_imbalance():
    report = BiasReport()
    for _ in range(20):
        report.add({"text": "He is a brilliant engineer and a good father."})
    for _ in range(6):
        report.add({"text": "She is a lazy and bad nurse."})
    result = report.result()
    assert "gender" in result["flagged"] and result["axes"]["gender"]["sentiment_gap"] == 1.0
    assert result["axes"]["gender"]["groups"]["male"]["mentions"] == 20
    assert not result["axes"]["religion"]["flagged"]
    balanced = BiasReport()
    for _ in range(10):
        balanced.add({"text": "He is a brilliant engineer."})
        balanced.add({"text": "She is a brilliant engineer."})
    assert balanced.result()["flagged"] == []


def test_pack_keeps_document_boundaries():
    rows = list(pack([[1, 2, 3], [4, 5, 6, 7, 8], [9]], 4))
    assert rows == [([1, 2, 3, 4], [0, 3, 4]), ([5, 6, 7, 8], [0, 4]), ([9, 0, 0, 0], [0, 1])]


# --- the whole pipeline --------------------------------------------------------------------------------------------
def test_pipeline_end_to_end(tmp_path, keyring):
    rows = [chat(TEXT, "Danke, ich melde mich bei Ihnen. " + LONG)]
    rows += [chat(prose(i), f"Answer {i}: {prose(1000 + i)}") for i in range(40)]
    rows += [chat(prose(3).replace(" ", "  "), f"Answer 3: {prose(1003)}")]  # exact duplicate after normalising
    rows += [chat("Could you summarise the meeting?", LONG), chat("Please summarise the meeting.",
                                                                   LONG.replace("spring", "autumn"))]  # near
    rows += [chat("ok", "fine"), chat("Bonjour, comment allez-vous aujourd'hui, mon ami de Paris?",
                                      "Très bien, merci beaucoup, et vous, mon cher ami?")]
    rows += [chat("Is he a good doctor?", "He is a brilliant doctor and a good man, truly.") for _ in range(1)]
    rows += ["{broken"]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    store = LocalStore(tmp_path / "store")
    sealer = KeyringSealer(keyring, "v1")
    config = PipelineConfig.from_dict({"ingest": {"on_error": "skip"}, "pii": "pseudonymise",
                                       "augment": ["counterfactual"], "validation_fraction": 0.2})
    result = run_pipeline(src, config, store=store, sealer=sealer, version_id="v1",
                          pseudonym=hmac_pseudonymiser(b"x" * 32))
    card = result.card
    stages = {s["name"]: s for s in card["stages"]}
    assert card["records_in"] == len(rows)
    assert stages["ingest"]["removed"] == {"malformed": 1}
    assert stages["filters"]["removed"] == {"too_short": 1, "language": 1}
    assert stages["exact_dedup"]["removed"] == {"duplicate": 1}
    assert stages["near_dedup"]["removed"] == {"near_duplicate": 1}
    assert card["ingest_errors"] == [{"line": len(rows), "error": card["ingest_errors"][0]["error"]}]
    assert card["pii"]["EMAIL"] == 2 and card["pii"]["DE_TAX_ID"] == 1 and card["pii"]["PHONE"] == 3
    assert card["digest"] == result.manifest.digest

    train = list(iter_split(store, sealer, result.manifest, "train"))
    validation = list(iter_split(store, sealer, result.manifest, "validation"))
    assert card["records_out"] == len(train) + len(validation) == card["splits"]["train"] + card["splits"]["validation"]
    assert validation and not any(r["meta"].get("augmented") for r in validation)
    added = [r for r in train if r["meta"].get("augmented") == "counterfactual"]
    assert added and all(r["meta"]["synthetic"] and r["meta"]["source"] for r in added)
    assert card["augmentation"]["added"]["counterfactual"] == len(added)
    everything = json.dumps(train + validation, ensure_ascii=False)
    for value in PLANTED.values():
        assert value not in everything
    # encrypted at rest: no planted value (or a distinctive phrase) in any stored byte
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for needle in [*PLANTED.values(), "library extension", "committee"]:
                assert needle.encode() not in blob, path
    from gateway.datasets.markdown import to_markdown

    md = to_markdown(card)
    assert "## Personal data (pseudonymise)" in md and "| near_dedup |" in md
    samples = sample_quarantine(store, sealer, result.manifest)
    assert set(samples) == {"filters:too_short", "filters:language", "exact_dedup:duplicate",
                            "near_dedup:near_duplicate"}
    # deterministic, and the same on every core: forked workers give the same split, stages and counts
    import dataclasses

    parallel = dataclasses.replace(config, workers=2, parallel_after=10)
    again = run_pipeline(src, parallel, store=LocalStore(tmp_path / "s2"), sealer=KeyringSealer(keyring, "v1"),
                         version_id="v1",
                         pseudonym=hmac_pseudonymiser(b"x" * 32))
    for key in ("splits", "stages", "pii", "languages", "duplicates"):
        assert again.card[key] == card[key], key
    assert list(iter_split(LocalStore(tmp_path / "s2"), sealer, again.manifest, "train")) == train


def test_failed_run_leaves_nothing(tmp_path, keyring):
    src = write_jsonl(tmp_path / "in.jsonl", [chat("hello there friend", LONG)] * 3 + ["{broken"])
    store = LocalStore(tmp_path / "store")
    with pytest.raises(IngestError, match="line 4"):
        run_pipeline(src, PipelineConfig(shard_records=1), store=store, sealer=KeyringSealer(keyring, "v2"),
                     version_id="v2")
    assert list(store.list("v2")) == []


def test_bpe_tokenise_and_pack(tmp_path, keyring):
    rows = [{"text": f"Document {i}: {LONG} Extra words {i * 31} for variety."} for i in range(30)]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    store = LocalStore(tmp_path / "store")
    sealer = KeyringSealer(keyring, "v3")
    config = PipelineConfig(tokenise=TokeniseConfig(tokenizer="bpe:300", seq_len=64),
                            dedup=PipelineConfig().dedup.__class__(near=False))
    result = run_pipeline(src, config, store=store, sealer=sealer, version_id="v3")
    tokens = result.card["tokens"]
    assert tokens["train"]["tokens"] > 0 and tokens["train"]["packed_rows"] >= tokens["train"]["tokens"] // 64
    from gateway.datasets.shards import read_shard

    entry = result.manifest.of("train.packed")[0]
    ids, cu = unpack_bytes(read_shard(store, sealer, result.manifest, entry))
    assert ids.shape[1] == 64 and all(c[0] == 0 and c[-1] <= 64 for c in cu)
