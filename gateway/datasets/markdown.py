"""The data card as readable Markdown (``palisade datasets show ID --markdown``)."""

from __future__ import annotations

from typing import Any


def to_markdown(c: dict[str, Any]) -> str:
    """``c``: the card JSON, optionally merged with the version's governance fields (status, owner...)."""
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
    if c.get("tags") or c.get("labels"):
        lines += ["", "## Tags and labels", ""]
        for name, counts in (c.get("tags") or {}).items():
            lines.append(f"- {name}: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "—"))
        lines.append("- labels: " + (", ".join(f"{k} {v}" for k, v in sorted((c.get("labels") or {}).items()))
                                     or "—"))
        if c.get("labels_rejected"):
            lines.append(f"- imported labels rejected (not short identifiers): {c['labels_rejected']}")
    aug = c["augmentation"]
    lines += ["", "## Augmentation", "", f"- methods: {', '.join(aug['methods']) or 'none'}; added: "
              f"{aug['added'] or 'none'}", f"- {aug['provenance']}"]
    if c.get("ingest_errors"):
        lines += ["", "## Ingest errors (first 100)", ""]
        lines += [f"- line {e['line']}: {e['error']}" for e in c["ingest_errors"]]
    lines += ["", "## Not covered", ""] + [f"- {x}" for x in c["not_covered"]]
    return "\n".join(lines) + "\n"
