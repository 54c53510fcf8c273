"""Everything measured on a candidate right after training, in the training process (which owns the device).

``spec`` (from the run request's config ``evaluation``) picks what runs: ``bias`` (causal LMs), ``response_time``
(first-token latency and decode tokens/s with greedy generation), ``classification`` (validation records with a
``label``: the generated answer's first line is the prediction) and ``rouge`` (prompt/completion validation
pairs). Validation loss and perplexity come from the loop. ``max_examples`` bounds the cost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from trainer.evaluate import bias, metrics
from trainer.methods.base import Prepared
from trainer.runs.data import DatasetSource, record_pair


def _generate(model, tokenizer, prompt: str, max_new_tokens: int, chat: bool) -> tuple[str, float, float]:
    """(text, seconds to the first token, decode tokens/s)."""
    device = next(model.parameters()).device
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt")
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    ids = ids.to(device)
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        dt = time.perf_counter() - t0
    new = out[0, ids.shape[1] :] if not model.config.is_encoder_decoder else out[0]
    return tokenizer.decode(new, skip_special_tokens=True), first, len(new) / max(dt, 1e-9)


def evaluate_candidate(prep: Prepared, output: Path, spec: dict[str, Any], source: DatasetSource) -> dict:
    model, tok = prep.model, prep.tokenizer
    model.eval()
    family = prep.info.get("family", "encoder")  # causal | seq2seq | encoder
    generative = family in ("causal", "seq2seq")
    chat = family == "causal" and bool(getattr(tok, "chat_template", None))
    n = int(spec.get("max_examples", 16))
    new_tokens = int(spec.get("max_new_tokens", 16))
    result: dict[str, Any] = {}
    records = [r for r in source.records("validation")][:n]
    if spec.get("bias") and family == "causal":
        result["bias"] = bias.bias_score(model, tok, bias.load_pairs(spec.get("bias_pairs")))
    if generative and (spec.get("response_time") or spec.get("classification") or spec.get("rouge")):
        preds, refs, labels, firsts, rates = [], [], [], [], []
        for rec in records:
            pair = record_pair(rec)
            if not pair:
                continue
            text, first, rate = _generate(model, tok, pair[0], new_tokens, chat)
            firsts.append(first)
            rates.append(rate)
            preds.append(text.strip())
            refs.append(pair[1])
            if "label" in rec:
                labels.append((str(rec["label"]), text.strip().splitlines()[0].strip() if text.strip() else ""))
        if firsts:
            firsts.sort()
            result["response_time"] = {"first_token_s_p50": firsts[len(firsts) // 2],
                                       "tokens_per_s": sum(rates) / len(rates), "samples": len(firsts)}
        if spec.get("rouge") and preds:
            result["rouge"] = metrics.rouge(preds, refs)
        if spec.get("classification") and labels:
            result["classification"] = metrics.classification_metrics([t for t, _ in labels], [p for _, p in labels])
    return result
