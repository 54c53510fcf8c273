"""Task metrics: classification (accuracy, precision, recall, F1, confusion matrix) and ROUGE.

Classification metrics are macro-averaged over the labels seen in either list; the confusion matrix is
``{true_label: {predicted_label: count}}`` so false positives and negatives per class can be read off it.
ROUGE uses Google's ``rouge-score`` package (the reference re-implementation of ROUGE-1.5.5; offline).
"""

from __future__ import annotations

import math
from collections import Counter


def classification_metrics(y_true: list[str], y_pred: list[str]) -> dict:
    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError("need two equal-length, non-empty label lists")
    labels = sorted(set(y_true) | set(y_pred))
    pairs = Counter(zip(y_true, y_pred, strict=True))
    confusion = {t: {p: pairs.get((t, p), 0) for p in labels} for t in labels}
    per_class = {}
    for c in labels:
        tp = pairs.get((c, c), 0)
        fp = sum(pairs.get((t, c), 0) for t in labels if t != c)
        fn = sum(pairs.get((c, p), 0) for p in labels if p != c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "false_positives": fp,
                        "false_negatives": fn, "support": tp + fn}
    n = len(labels)
    return {
        "accuracy": sum(pairs.get((c, c), 0) for c in labels) / len(y_true),
        "precision": sum(v["precision"] for v in per_class.values()) / n,
        "recall": sum(v["recall"] for v in per_class.values()) / n,
        "f1": sum(v["f1"] for v in per_class.values()) / n,
        "per_class": per_class,
        "confusion_matrix": confusion,
    }


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = Counter()
    for pred, ref in zip(predictions, references, strict=True):
        for name, score in scorer.score(ref, pred).items():
            totals[name] += score.fmeasure
    return {name: totals[name] / max(1, len(predictions)) for name in ("rouge1", "rouge2", "rougeL")}


def perplexity(loss: float | None) -> float | None:
    return None if loss is None else math.exp(min(loss, 50.0))
