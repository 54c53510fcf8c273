"""The data card: what a version holds and what each stage did to it, as JSON and as readable Markdown.

The JSON is what ``palisade datasets show`` prints (with the version's status and governance fields added by
the gateway), so its top-level keys are a contract: ``records_in``, ``records_out``, ``pii`` (type -> count),
``stages`` (``{name, records_in, records_out}``...).
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
          duplicates: dict[str, int], bias: dict[str, Any], augmentation: dict[str, int], tokens: dict[str, Any],
          chars: int, digest: str, seconds: float) -> dict[str, Any]:
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
        "augmentation": {"added": augmentation, "methods": list(config.augment),
                         "provenance": "added rows carry meta.augmented, meta.synthetic and meta.source "
                                       "(content hash of the source row); training split only"},
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


def to_markdown(c: dict[str, Any]) -> str:
    lines = [f"# Data card — dataset version `{c['id']}`", ""]
    for key in ("name", "status", "owner", "purpose", "classification", "legal_basis", "source", "licence",
                "retention_days", "digest", "code_version"):
        if c.get(key) is not None:
            lines.append(f"- **{key.replace('_', ' ')}**: {c[key]}")
    lines += ["", "## Size", "", f"- records in: {c['records_in']}, out: {c['records_out']} "
              f"(train {c['splits'].get('train', 0)}, validation {c['splits'].get('validation', 0)})",
              f"- characters out: {c['chars_out']}"]
    for split in ("train", "validation"):
        if split in (c.get("tokens") or {}):
            t = c["tokens"][split]
            lines.append(f"- {split} tokens: {t['tokens']} in {t['packed_rows']} packed rows of "
                         f"{c['tokens']['seq_len']}")
    lines += ["", "## Stages", "", "| stage | in | out | removed |", "| --- | --- | --- | --- |"]
    for s in c["stages"]:
        removed = ", ".join(f"{k}: {v}" for k, v in s.get("removed", {}).items()) or "—"
        lines.append(f"| {s['name']} | {s['records_in']} | {s['records_out']} | {removed} |")
    lines += ["", f"## Personal data ({c['pii_method']})", "", "| type | found |", "| --- | --- |"]
    lines += [f"| {t} | {n} |" for t, n in c["pii"].items()]
    lines += ["", "Not covered: " + "; ".join(c["pii_not_covered"]) + "."]
    d = c["duplicates"]
    lines += ["", "## Duplicates", "", f"- exact: {d['exact']}; near: {d['near']} in {d['near_clusters']} clusters"]
    lines += ["", "## Languages", ""] + [f"- {k}: {v}" for k, v in sorted(c["languages"].items())]
    bias = c["bias"]["after_augmentation"]
    lines += ["", "## Bias report", "", f"threshold {bias['threshold']}; flagged: "
              f"{', '.join(bias['flagged']) or 'none'}", "", "| axis | mentions | score | flagged |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {v['mentions']} | {v['score']} | {'yes' if v['flagged'] else 'no'} |"
              for a, v in bias["axes"].items()]
    aug = c["augmentation"]
    lines += ["", "## Augmentation", "", f"- methods: {', '.join(aug['methods']) or 'none'}; added: "
              f"{aug['added'] or 'none'}", f"- {aug['provenance']}"]
    if c.get("ingest_errors"):
        lines += ["", "## Ingest errors (first 100)", ""]
        lines += [f"- line {e['line']}: {e['error']}" for e in c["ingest_errors"]]
    lines += ["", "## Not covered", ""] + [f"- {x}" for x in c["not_covered"]]
    return "\n".join(lines) + "\n"
