"""Re-measure a production version on its alias's evaluation set (the trainer's half of continuous evaluation).

The set is an operator's JSONL file ``<data_dir>/evaluations/<alias>.jsonl`` (prompt/completion, chat
``messages``, or ``text`` records). Only the first ``MAX_RECORDS`` count and only transformers artifacts are
measured (perplexity of the whole text, on CPU unless a GPU is free): cheap enough for a beat task. No set, or
an artifact of another kind: nothing is measured and only feedback is judged.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from trainer.runs.data import record_pair

MAX_RECORDS = 16


def evaluation_set(data_dir: Path, alias: str) -> Path | None:
    path = Path(data_dir) / "evaluations" / f"{alias}.jsonl"
    return path if alias.replace("-", "").replace("_", "").replace(".", "").isalnum() and path.is_file() else None


def _texts(path: Path) -> list[str]:
    texts = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        pair = record_pair(rec)
        texts.append(f"{pair[0]}\n{pair[1]}" if pair else str(rec.get("text", "")))
        if len(texts) >= MAX_RECORDS:
            break
    return [t for t in texts if t.strip()]


def perplexity(model_dir: str, texts: list[str]) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt", truncation=True, max_length=256)["input_ids"]
            if ids.shape[1] < 2:
                continue
            loss = model(input_ids=ids, labels=ids).loss.item()
            total, count = total + loss * (ids.shape[1] - 1), count + ids.shape[1] - 1
    return math.exp(total / count) if count else float("nan")


def measurer(data_dir: Path):
    """``measure(alias, version)`` for ``gateway.models.evaluations.check_production``."""

    async def measure(alias: str, version: Any) -> dict[str, Any] | None:
        path = evaluation_set(data_dir, alias)
        if path is None or version.kind != "transformers" or not version.artifact:
            return None
        texts = _texts(path)
        if not texts:
            return None
        import asyncio

        value = await asyncio.to_thread(perplexity, version.artifact, texts)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return {"set": digest, "metrics": {"perplexity": round(value, 4)}}

    return measure
