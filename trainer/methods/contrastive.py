"""Contrastive training of a sentence encoder on (anchor, positive) pairs with in-batch negatives (InfoNCE).

Each batch of B pairs gives a (B, B) matrix of cosine similarities between anchors and positives; the
diagonal are the positives and every other column is a negative, so the loss is cross-entropy over rows
(and, with ``symmetric``, over columns too). Sentences are mean-pooled over non-padding tokens. Anchors and
positives go through the encoder in one forward pass (one graph, which DDP and compile both prefer).

Pairs come from prompt/completion records, the first user turn and its answer in chat records, or
``text_a``/``text_b``; plain text records give (sentence, next sentence).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.methods.base import Prepared, pad_stack, preset_name, save_hf
from trainer.methods.configs import ContrastiveConfig
from trainer.methods.encoders import bert_config, load_tokenizer
from trainer.methods.mlm import sentences
from trainer.runs.data import DatasetSource, record_pair, record_text


def pairs_of(records) -> list[tuple[str, str]]:
    out = []
    for rec in records:
        pair = record_pair(rec)
        if pair:
            out.append(pair)
        else:
            sents = sentences(record_text(rec))
            out += list(zip(sents, sents[1:], strict=False))
    return out


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-6)  # (N, C)


def encode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, T, C)
    return F.normalize(mean_pool(hidden, attention_mask), dim=-1)


def make_loss(temperature: float, symmetric: bool):
    def loss(model, batch):
        n = batch["input_ids"].shape[0] // 2
        emb = encode(model, batch["input_ids"], batch["attention_mask"])  # (2B, C)
        logits = emb[:n] @ emb[n:].T / temperature  # (B, B)
        target = torch.arange(n, device=logits.device)
        value = F.cross_entropy(logits.float(), target)
        if symmetric:
            value = (value + F.cross_entropy(logits.T.float(), target)) / 2
        return value, int(batch["attention_mask"].sum())

    return loss


def make_collate(tokenizer, seq_len: int):
    def collate(examples: list[tuple[list[int], list[int]]], _gen: torch.Generator) -> dict[str, torch.Tensor]:
        rows = [a for a, _ in examples] + [b for _, b in examples]  # anchors then positives
        return {"input_ids": pad_stack(rows, tokenizer.pad_token_id),  # (2B, T)
                "attention_mask": pad_stack([[1] * len(r) for r in rows], 0)}

    return collate


def prepare(cfg: ContrastiveConfig, base: str | None, source: DatasetSource, work_dir: Path) -> Prepared:
    from transformers import AutoModel, BertModel

    train_pairs = pairs_of(source.records("train"))
    if len(train_pairs) < 2:
        raise ValueError("contrastive training needs at least two pairs")
    tokenizer = load_tokenizer(base, [t for p in train_pairs for t in p], cfg.vocab_size)
    if base and not base.startswith("preset:"):
        model = AutoModel.from_pretrained(base)
    else:
        model = BertModel(bert_config(preset_name(base, cfg.preset), len(tokenizer), cfg.seq_len,
                                      tokenizer.pad_token_id), add_pooling_layer=False)

    def enc(text: str) -> list[int]:
        return tokenizer(text, truncation=True, max_length=cfg.seq_len)["input_ids"]

    def encode_pairs(pairs):
        return [(enc(a), enc(b)) for a, b in pairs]

    def save(m, out: Path) -> None:
        save_hf(m, tokenizer, out)
        (out / "sentence_encoder.json").write_text(json.dumps({"pooling": "mean", "normalize": True}))

    return Prepared(model=model, train=encode_pairs(train_pairs),
                    validation=encode_pairs(pairs_of(source.records("validation"))),
                    collate=make_collate(tokenizer, cfg.seq_len), loss=make_loss(cfg.temperature, cfg.symmetric),
                    save=save, tokenizer=tokenizer, perplexity=False)
