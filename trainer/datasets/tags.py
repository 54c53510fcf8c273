"""Per-record tags (source, topic, language) and labels, kept in the record's ``meta`` so they travel with it
into the stored shards, are counted in the data card and can select records for an evaluation set
(``palisade datasets export ID --label X``).

* ``source``: the input file inside a folder/zip (``meta.file``), else the configured source, else the upload's
  name. ``language``: what the language filter detected (``und`` when too short or not judged).
* ``topic``: every topic whose keywords occur (``tags.topics``: ``{topic: [regex, ...]}``, case-insensitive,
  whole words).
* labels: imported from a field of the input (``tags.label_field``, read at ingest; a string or a list of
  strings) and/or by rules (``tags.labels``: ``[{"label": ..., "pattern": regex, "role": "user"|"any"}]``).

Label and tag values are short identifiers (``[\\w .:/-]``, at most 64 characters): free text in a label field
would bypass PII removal, so anything else is dropped and counted as ``labels_rejected``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trainer.datasets.records import Record, joined_text

VALUE = re.compile(r"^[\w .:/-]{1,64}$")


def clean_labels(raw: Any) -> tuple[list[str], int]:
    """``(labels, rejected)`` from an imported field value: a string or a list of strings."""
    values = raw if isinstance(raw, list) else [raw]
    good = [v.strip() for v in values if isinstance(v, str) and VALUE.match(v.strip())]
    return good, len(values) - len(good)


@dataclass(frozen=True)
class TagConfig:
    #: the source tag when a record has no file name (default: the input's name)
    source: str | None = None
    topics: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: ``[{"label": "refund", "pattern": "refund|money back", "role": "any"}]``
    labels: tuple[dict[str, str], ...] = ()
    #: a field of each input row whose value becomes the record's labels (JSONL/CSV)
    label_field: str | None = None

    @classmethod
    def from_dict(cls, raw: dict | None) -> TagConfig:
        raw = dict(raw or {})
        topics = {str(k): tuple(v if isinstance(v, list) else [v]) for k, v in (raw.pop("topics", None) or {}).items()}
        labels = tuple(dict(r) for r in raw.pop("labels", None) or ())
        for rule in labels:
            if not VALUE.match(str(rule.get("label", ""))) or not rule.get("pattern"):
                raise ValueError(f"tags.labels: each rule needs a short 'label' and a 'pattern' ({rule!r})")
            re.compile(rule["pattern"])
        for name in topics:
            if not VALUE.match(name):
                raise ValueError(f"tags.topics: {name!r} is not a short identifier")
        return cls(topics=topics, labels=labels, **raw)


class Tagger:
    """Adds ``meta.tags`` and ``meta.labels`` to a record and counts them."""

    def __init__(self, config: TagConfig, default_source: str) -> None:
        self.config = config
        self.default_source = config.source or default_source
        self.topics = [(t, re.compile(r"\b(?:" + "|".join(ps) + r")\b", re.IGNORECASE))
                       for t, ps in config.topics.items()]
        self.rules = [(r["label"], re.compile(r["pattern"], re.IGNORECASE), r.get("role", "any"))
                      for r in config.labels]
        self.counts: dict[str, Counter[str]] = {"source": Counter(), "topic": Counter(), "language": Counter()}
        self.labels: Counter[str] = Counter()
        self.labels_rejected = 0
        self.labels_by_split: dict[str, Counter[str]] = {"train": Counter(), "validation": Counter()}

    def tag(self, record: Record) -> Record:
        meta = dict(record.get("meta") or {})
        text = joined_text(record)
        user = "\n".join(m.get("content", "") for m in record.get("messages", []) if m.get("role") == "user") \
            if "messages" in record else record.get("prompt", text)
        source = meta.get("file") or self.default_source
        tags = {"source": source if VALUE.match(str(source)) else "input",
                "language": meta.pop("language", "und"),
                "topic": [t for t, rx in self.topics if rx.search(text)]}
        self.labels_rejected += meta.pop("labels_rejected", 0)
        labels = set(meta.pop("labels", []))
        labels.update(label for label, rx, role in self.rules if rx.search(user if role == "user" else text))
        meta["tags"], meta["labels"] = tags, sorted(labels)
        return {**record, "meta": meta}

    def count(self, row: Record, split: str) -> None:
        meta = row.get("meta") or {}
        tags = meta.get("tags") or {}
        self.counts["source"][tags.get("source", "input")] += 1
        self.counts["language"][tags.get("language", "und")] += 1
        for t in tags.get("topic", []):
            self.counts["topic"][t] += 1
        for label in meta.get("labels", []):
            self.labels[label] += 1
            self.labels_by_split[split][label] += 1

    def result(self) -> dict[str, Any]:
        return {"tags": {k: dict(v) for k, v in self.counts.items()}, "labels": dict(self.labels),
                "labels_by_split": {k: dict(v) for k, v in self.labels_by_split.items()},
                "labels_rejected": self.labels_rejected}

