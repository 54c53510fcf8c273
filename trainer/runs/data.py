"""Where a run's records come from: one small protocol, so the datasets domain plugs in its own source.

A source yields records of one split as plain dicts in one of three shapes — ``{"messages": [...]}``,
``{"prompt", "completion"}`` or ``{"text"}`` — and names a digest of its exact content, recorded with the run
for reproducibility. ``JsonlDatasetSource`` reads ``<dir>/<split>.jsonl`` files (tests, local runs, and the
layout a worker process receives); the datasets domain can hand the worker a directory in that layout.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

SPLITS = ("train", "validation", "test")


@runtime_checkable
class DatasetSource(Protocol):
    """Records of an (approved) dataset version, by split."""

    def records(self, split: str) -> Iterator[dict]: ...

    def digest(self) -> str: ...


class JsonlDatasetSource:
    """``<root>/train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (missing splits are empty)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def records(self, split: str) -> Iterator[dict]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        path = self.root / f"{split}.jsonl"
        if not path.exists():
            return
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def digest(self) -> str:
        h = hashlib.sha256()
        for split in SPLITS:
            path = self.root / f"{split}.jsonl"
            if path.exists():
                h.update(split.encode() + b"\0" + path.read_bytes() + b"\0")
        return h.hexdigest()


class MemorySource:
    """Records already read (e.g. decrypted from the datasets domain's shards) with the digest they came under."""

    def __init__(self, splits: dict[str, list[dict]], digest: str) -> None:
        self.splits, self._digest = splits, digest

    def records(self, split: str) -> Iterator[dict]:
        yield from self.splits.get(split, [])

    def digest(self) -> str:
        return self._digest


def write_jsonl_source(root: Path | str, splits: dict[str, list[dict]]) -> JsonlDatasetSource:
    """Write records as a JSONL source (what a run directory carries to the training process)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with (root / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return JsonlDatasetSource(root)


def record_text(record: dict) -> str:
    """Plain text of any record shape (pretraining objectives read every record as text)."""
    if "text" in record:
        return str(record["text"])
    if "messages" in record:
        return "\n".join(str(m.get("content", "")) for m in record["messages"])
    return f"{record.get('prompt', '')}\n{record.get('completion', '')}"


def record_pair(record: dict) -> tuple[str, str] | None:
    """(input, target) of a record: prompt/completion, or the first user turn and the assistant reply after it."""
    if "prompt" in record and "completion" in record:
        return str(record["prompt"]), str(record["completion"])
    if "messages" in record:
        msgs = record["messages"]
        for i, m in enumerate(msgs[:-1]):
            if m.get("role") == "user" and msgs[i + 1].get("role") == "assistant":
                return str(m["content"]), str(msgs[i + 1]["content"])
    if "text_a" in record and "text_b" in record:
        return str(record["text_a"]), str(record["text_b"])
    return None
