"""Evaluation: classification metrics, ROUGE, paired-likelihood bias score, and gates recorded with numbers."""

from __future__ import annotations

import pytest

from trainer.evaluate import gates
from trainer.evaluate.bias import bias_score, load_pairs
from trainer.evaluate.metrics import classification_metrics, rouge


def test_classification_metrics_and_confusion_matrix():
    m = classification_metrics(["spam", "spam", "ham", "ham"], ["spam", "ham", "ham", "ham"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == {"ham": {"ham": 2, "spam": 0}, "spam": {"ham": 1, "spam": 1}}
    assert m["per_class"]["spam"]["false_negatives"] == 1 and m["per_class"]["ham"]["false_positives"] == 1
    assert m["per_class"]["spam"]["precision"] == 1.0 and m["per_class"]["spam"]["recall"] == 0.5
    assert m["f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_rouge_offline():
    same = rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same["rouge1"] == pytest.approx(1.0) and same["rougeL"] == pytest.approx(1.0)
    assert rouge(["dogs bark"], ["the cat sat"])["rouge1"] == 0.0


def test_bias_score_on_tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = load_pairs()
    assert len(pairs) >= 10 and all({"stereotype", "anti"} <= set(p) for p in pairs)
    result = bias_score(model, tok, pairs)
    assert 0.0 <= result["bias_score"] <= 1.0 and result["pairs"] == len(pairs)
    assert set(result["by_category"]) >= {"gender", "age"}


def test_gates_absolute_and_relative_to_production():
    spec = [
        {"metric": "f1", "op": ">=", "threshold": 0.8},
        {"metric": "perplexity", "op": "<=", "threshold": 0.02, "relative": "ratio"},
        {"metric": "bias.bias_score", "op": "<=", "threshold": 0.02, "relative": "delta"},
        {"metric": "rougeL", "op": ">=", "threshold": 0.1},
    ]
    candidate = {"perplexity": 10.3, "classification": {"f1": 0.85}, "bias": {"bias_score": 0.55}}
    production = {"perplexity": 10.0, "classification": {"f1": 0.9}, "bias": {"bias_score": 0.5}}
    results = gates.check(spec, candidate, production)
    by_metric = {r["metric"]: r for r in results}
    assert by_metric["f1"]["passed"] is True and by_metric["f1"]["value"] == 0.85
    assert by_metric["perplexity"]["passed"] is False and by_metric["perplexity"]["bound"] == pytest.approx(10.2)
    assert by_metric["bias.bias_score"]["passed"] is False and by_metric["bias.bias_score"]["bound"] == 0.52
    assert by_metric["rougeL"]["passed"] is False and "missing" in by_metric["rougeL"]["reason"]
    assert not gates.all_passed(results)
    first = gates.check(spec[1:2], candidate, None)[0]  # no production version yet
    assert first["passed"] is True and "no production" in first["reason"]
    assert set(gates.as_registry_gates(results)) == {r["name"] for r in results}
