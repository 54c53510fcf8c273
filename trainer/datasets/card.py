"""The data card: what a version holds and what each stage did to it, as JSON and as readable Markdown.

The JSON is what ``palisade datasets show`` prints (with the version's status and governance fields added by
the gateway), so its top-level keys are a contract: ``records_in``, ``records_out``, ``pii`` (type -> count),
``stages`` (``{name, records_in, records_out}``...). The Markdown rendering is ``gateway.datasets.markdown``
(the gateway shows cards without importing the trainer).
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from trainer.datasets import pii as pii_mod


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the pipeline code (recorded with each version), or 'unknown' outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,  # noqa: S607
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def build(*, version_id: str, config: Any, report: Any, stages: list[dict[str, Any]], pii_counts: dict[str, int],
          splits: dict[str, int], quarantined: int, languages: dict[str, int], boilerplate_lines: int,
          duplicates: dict[str, int], bias: dict[str, Any], augmentation: dict[str, int],
          augment_failures: dict[str, int], tokens: dict[str, Any],
          chars: int, digest: str, seconds: float, tagging: dict[str, Any] | None = None) -> dict[str, Any]:
    tagging = tagging or {}
    return {
        "id": version_id,
        "format": report.format,
        "records_in": report.records + report.skipped,
        "records_out": sum(splits.values()),
        "splits": splits,
        "chars_out": chars,
        "tokens": tokens,
        "pii": {t: pii_counts.get(t, 0) for t in pii_mod.TYPES},
        "pii_method": config.pii,
        "pii_covered": list(pii_mod.TYPES),
        "pii_not_covered": list(pii_mod.NOT_COVERED),
        "stages": stages,
        "ingest_errors": [{"line": line, "error": msg} for line, msg in report.errors],
        "quarantined": quarantined,
        "boilerplate_lines_removed": boilerplate_lines,
        "duplicates": duplicates,
        "languages": languages,
        "bias": bias,
        "tags": tagging.get("tags", {}),
        "labels": tagging.get("labels", {}),
        "labels_by_split": tagging.get("labels_by_split", {}),
        "labels_rejected": tagging.get("labels_rejected", 0),
        "augmentation": {"added": augmentation, "methods": list(config.augment), "model": config.augment_model,
                         "failed_calls": augment_failures,
                         "pivot": config.augment_pivot if "backtranslate" in config.augment else None,
                         "provenance": "added rows carry meta.augmented (counterfactual, paraphrase, "
                                       "backtranslation, synthetic), meta.synthetic, meta.model and meta.source "
                                       "(content hash of the source row) or meta.seeds (synthetic rows); "
                                       "training split only; model output is PII-scrubbed again"},
        "not_covered": [
            "PII types listed in pii_not_covered",
            "language detection below quality.language_min_chars characters",
            "bias terms outside trainer/datasets/terms/*.txt",
        ],
        "digest": digest,
        "code_version": code_version(),
        "config": config.to_dict(),
        "seconds": seconds,
    }
