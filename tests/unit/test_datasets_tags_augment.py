"""Tags, labels, back-translation and synthetic rows in the pipeline (no gateway): every record carries
``meta.tags`` (source, topic, language) and ``meta.labels`` (imported from a field and by rules), the data card
counts them; back-translation and synthetic rows are added to the training split only, with provenance, and
are PII-scrubbed again; the evaluation-set selection picks records by label and tag.

``ask`` here is a plain function standing in for the served model (the gateway path, with the fake OpenAI
upstream, is tests/integration/test_datasets_augment_api.py)."""

from __future__ import annotations

import json

import pytest

from gateway.datasets.evalsets import matches, write_jsonl
from gateway.datasets.shards import KeyringSealer, iter_split
from gateway.datasets.storage import LocalStore
from tests.unit.test_datasets_pipeline import keyring, prose  # noqa: F401 - fixture
from trainer.datasets.pipeline import PipelineConfig, run_pipeline
from trainer.datasets.tags import TagConfig, Tagger, clean_labels

CALLS: list[tuple[str, str]] = []


def ask(instruction: str, text: str) -> str:
    """A model that translates by tagging, writes synthetic rows with an invented e-mail address in them."""
    CALLS.append((instruction, text))
    if instruction.startswith("Translate"):
        lang = instruction.split(" into ")[1].split(".")[0]
        return f"[{lang}] {text}"
    if instruction.startswith("Below are examples") or instruction.startswith("Write"):
        return f"A new question about the refund of order 77, write to max.mustermann@example.org. {prose(999)}"
    return "Here is the answer: " + prose(998)


def rows(n: int = 30) -> list[dict]:
    out = []
    for i in range(n):
        label = "refund" if i < 2 else ("billing" if i % 2 else "other")
        out.append({"prompt": prose(300 + i) + (" invoice" if i % 3 == 0 else ""), "completion": prose(600 + i),
                    "intent": label})
    out.append({"prompt": prose(900), "completion": prose(901), "intent": "bad label with\nnewline <script>"})
    return out


@pytest.fixture
def run(tmp_path, keyring):  # noqa: F811
    def go(config: dict, data: list[dict], model=ask):
        src = tmp_path / "tickets.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in data))
        store = LocalStore(tmp_path / "store")
        sealer = KeyringSealer(keyring, "v9")
        result = run_pipeline(src, PipelineConfig.from_dict(config), store=store, sealer=sealer, version_id="v9",
                              ask=model)
        split = {s: list(iter_split(store, sealer, result.manifest, s)) for s in ("train", "validation")}
        return result.card, split
    return go


def test_tags_labels_counted_and_selectable(run, tmp_path):
    card, split = run({"validation_fraction": 0.3, "tags": {
        "label_field": "intent", "topics": {"money": ["invoice", "refund"]},
        "labels": [{"label": "mentions_children", "pattern": r"\bchildren\b", "role": "user"}]}}, rows())
    every = split["train"] + split["validation"]
    assert all(set(r["meta"]["tags"]) == {"source", "language", "topic"} for r in every)
    assert {r["meta"]["tags"]["source"] for r in every} == {"tickets.jsonl"}
    assert {r["meta"]["tags"]["language"] for r in every} == {"en"}
    assert card["labels"]["refund"] == 2 and card["labels_rejected"] == 1
    assert card["labels"]["billing"] + card["labels"]["other"] + 2 == len(every) - 1
    assert card["labels"].get("mentions_children", 0) == sum("children" in r["prompt"] for r in every)
    assert card["tags"]["topic"]["money"] == sum(1 for r in every if "invoice" in r["prompt"])
    assert card["tags"]["language"] == {"en": len(every)}
    assert sum(card["labels_by_split"]["validation"].values()) >= len(split["validation"]) - 1
    # the bad label never reaches the stored rows (free text in a label field would bypass PII removal)
    assert "<script>" not in json.dumps(every)

    billing_val = [r for r in split["validation"] if matches(r, label="billing")]
    assert billing_val and all("billing" in r["meta"]["labels"] for r in billing_val)
    assert [r for r in every if matches(r, tag="topic=money")] == [r for r in every if "invoice" in r["prompt"]]
    assert all(matches(r, tag="en") for r in every)
    out = tmp_path / "eval" / "billing.jsonl"
    assert write_jsonl(iter(billing_val), out) == len(billing_val)
    assert out.stat().st_mode & 0o777 == 0o600 and len(out.read_text().splitlines()) == len(billing_val)


def test_backtranslation_and_synthetic_rows_have_provenance(run):
    CALLS.clear()
    card, split = run({"validation_fraction": 0.3, "augment": ["backtranslate", "synthetic"],
                       "augment_model": "mock", "augment_pivot": "de",
                       "synthetic": {"min_per_label": 4, "seeds": 2,
                                     "templates": [{"label": "health", "instruction": "Write a patient question.",
                                                    "count": 2}]},
                       "tags": {"label_field": "intent"}}, rows())
    train, validation = split["train"], split["validation"]
    assert not any(r["meta"].get("synthetic") for r in validation)
    back = [r for r in train if r["meta"].get("augmented") == "backtranslation"]
    originals = [r for r in train if not r["meta"].get("synthetic")]
    assert len(back) == len(originals) == card["augmentation"]["added"]["backtranslation"]
    assert all(r["prompt"].startswith("[English] [German] ") and r["meta"]["pivot"] == "de"
               and r["meta"]["model"] == "mock" and len(r["meta"]["source"]) == 16 for r in back)
    # the completion is kept; tags and labels come with the row
    by_source = {r["meta"]["source"]: r for r in back}
    from trainer.datasets.records import content_hash

    assert all(by_source[content_hash(o).hex()[:16]]["meta"]["labels"] == o["meta"]["labels"] for o in originals)
    assert all(r["meta"]["tags"]["source"] == "tickets.jsonl" for r in back)

    synthetic = [r for r in train if r["meta"].get("augmented") == "synthetic"]
    refund_train = sum(1 for r in originals if "refund" in r["meta"]["labels"])
    from_seeds = [r for r in synthetic if not r["meta"]["template"]]
    assert len([r for r in from_seeds if r["meta"]["labels"] == ["refund"]]) == 4 - refund_train
    assert len([r for r in synthetic if r["meta"]["labels"] == ["health"]]) == 2
    assert all(r["meta"]["synthetic"] and r["meta"]["model"] == "mock" and r["meta"]["tags"]["source"] ==
               "synthetic:mock" and set(r) == {"prompt", "completion", "meta"} for r in synthetic)
    assert all(r["meta"]["seeds"] for r in from_seeds)
    # the model's invented address is scrubbed like collected data
    assert "max.mustermann@example.org" not in json.dumps(train)
    assert card["augmentation"]["added"]["synthetic"] == len(synthetic)
    assert card["labels"]["health"] == 2 and card["augmentation"]["pivot"] == "de"
    # the seed rows were shown to the model (only training rows), the template alone for "health"
    seed_prompts = [t for i, t in CALLS if i.startswith("Below are examples")]
    assert seed_prompts and all("Example 1:" in t for t in seed_prompts)
    val_prompts = {r["prompt"] for r in validation}
    assert not any(p in t for t in seed_prompts for p in val_prompts)


def test_failed_calls_cost_rows_not_the_job(run):
    def broken(instruction: str, text: str) -> str:
        raise TimeoutError("upstream down")

    card, split = run({"augment": ["backtranslate", "synthetic"], "augment_model": "mock",
                       "synthetic": {"templates": [{"label": "x", "instruction": "Write.", "count": 2}]}},
                      rows(6), model=broken)
    assert card["augmentation"]["added"] == {} and card["records_out"] == 7
    assert card["augmentation"]["failed_calls"]["TimeoutError"] == len(split["train"]) + 2
    with pytest.raises(ValueError, match="backtranslate"):
        run_pipeline(__file__, PipelineConfig.from_dict({"augment": ["backtranslate"]}), store=None, sealer=None,
                     version_id="x")
    tagger = Tagger(TagConfig.from_dict({"topics": {"a": "x"}}), "in")
    assert tagger.tag({"text": "x y", "meta": {}})["meta"]["tags"]["topic"] == ["a"]
    assert clean_labels(["ok", 3, "no\nway"]) == (["ok"], 2)
    with pytest.raises(ValueError):
        TagConfig.from_dict({"labels": [{"label": "x"}]})


def test_markdown_shows_tags_and_labels(run):
    from gateway.datasets.markdown import to_markdown

    card, _ = run({"tags": {"label_field": "intent", "topics": {"money": ["invoice"]}}}, rows(8))
    md = to_markdown(card)
    assert "## Tags and labels" in md and "- labels: " in md and "billing" in md and "money" in md
    assert "imported labels rejected" in md


def test_paraphrase_through_ask_is_scrubbed_and_tagged(run):
    def rewrite(instruction: str, text: str) -> str:
        assert instruction.startswith("Rewrite")
        return "In other words, mail jane.roe@example.net: " + text

    card, split = run({"augment": ["paraphrase"], "augment_model": "mock", "validation_fraction": 0.0,
                       "tags": {"label_field": "intent"}}, rows(4), model=rewrite)
    para = [r for r in split["train"] if r["meta"].get("augmented") == "paraphrase"]
    assert len(para) == 5 == card["augmentation"]["added"]["paraphrase"]
    assert "jane.roe@example.net" not in json.dumps(para) and all(r["meta"]["tags"]["language"] for r in para)
