"""Paired-sentence likelihood bias score (CrowS-Pairs style) for causal LMs, offline on small models.

For each pair (a stereotyping sentence and its minimally different counterpart) the model's total
log-likelihood of each sentence is compared; the score is the fraction of pairs where the model prefers the
stereotyping one (0.5 = no preference on average; lower is better). ``data/bias_pairs.jsonl`` is a small set
written for this repository; point ``path`` at a local CrowS-Pairs CSV converted to the same JSONL shape
(``stereotype``, ``anti``, ``category``) to use the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DEFAULT_PAIRS = Path(__file__).parent / "data" / "bias_pairs.jsonl"


def load_pairs(path: Path | None = None) -> list[dict]:
    with Path(path or DEFAULT_PAIRS).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@torch.no_grad()
def sentence_logprob(model, tokenizer, text: str, device) -> float:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)  # (1, T)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = torch.cat([torch.tensor([[bos]], device=device), ids], dim=1)
    logits = model(input_ids=ids).logits[:, :-1].float()  # (1, T, V)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1))
    return float(logp.sum())


def bias_score(model, tokenizer, pairs: list[dict] | None = None) -> dict:
    pairs = pairs or load_pairs()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prefers, by_cat = 0, {}
    for pair in pairs:
        worse = sentence_logprob(model, tokenizer, pair["stereotype"], device) > sentence_logprob(
            model, tokenizer, pair["anti"], device)
        prefers += worse
        cat = by_cat.setdefault(pair.get("category", "other"), [0, 0])
        cat[0] += worse
        cat[1] += 1
    model.train(was_training)
    return {"bias_score": prefers / len(pairs), "pairs": len(pairs),
            "by_category": {k: v[0] / v[1] for k, v in sorted(by_cat.items())}}
