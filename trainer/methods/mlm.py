"""Masked-language-model pretraining of a BERT-style encoder, optionally with next-sentence prediction.

Masks are drawn at batch time from the loop's data generator (its state is in the checkpoint, so a resumed
run masks exactly as the uninterrupted one): ``mlm_probability`` of the non-special tokens are selected,
80% become [MASK], 10% a random token, 10% stay. With ``nsp``, each example is a sentence pair, half real
continuations and half a random sentence (pairs fixed at preparation from the seed), and the model is
``BertForPreTraining`` (both losses summed).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

from trainer.methods.base import Prepared, pad_stack, preset_name, save_hf
from trainer.methods.configs import MLMConfig
from trainer.methods.encoders import bert_config, load_tokenizer
from trainer.runs.data import DatasetSource, record_text

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def build_examples(tokenizer, texts: list[str], cfg: MLMConfig, seed: int) -> list[dict]:
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    budget = cfg.seq_len - 3  # [CLS] a [SEP] b [SEP]
    if not cfg.nsp:
        return [{"a": enc(t)[: cfg.seq_len - 2], "b": None, "next": 0} for t in texts if t.strip()]
    rng = random.Random(seed)
    docs = [sentences(t) for t in texts]
    pool = [s for d in docs for s in d]
    out = []
    for doc in docs:
        for i in range(len(doc) - 1):
            is_next = rng.random() < 0.5 or len(pool) < 2
            b = doc[i + 1] if is_next else rng.choice(pool)
            a_ids, b_ids = enc(doc[i]), enc(b)
            half = budget // 2
            out.append({"a": a_ids[: max(half, budget - len(b_ids))], "b": b_ids[:half], "next": 0 if is_next else 1})
    return out


def make_collate(tokenizer, mlm_probability: float, nsp: bool):
    cls, sep, mask_id, pad = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id,
                              tokenizer.pad_token_id)
    vocab = len(tokenizer)

    def collate(examples: list[dict], gen: torch.Generator) -> dict[str, torch.Tensor]:
        rows, types = [], []
        for ex in examples:
            ids = [cls] + ex["a"] + [sep]
            tt = [0] * len(ids)
            if ex["b"] is not None:
                ids += ex["b"] + [sep]
                tt += [1] * (len(ex["b"]) + 1)
            rows.append(ids)
            types.append(tt)
        input_ids = pad_stack(rows, pad)  # (B, T)
        attention = pad_stack([[1] * len(r) for r in rows], 0)
        special = (input_ids == cls) | (input_ids == sep) | (attention == 0)
        probs = torch.full(input_ids.shape, mlm_probability)
        probs[special] = 0.0
        selected = torch.bernoulli(probs, generator=gen).bool()
        if not selected.any():  # never a batch without targets (NaN loss)
            selected[0, 1] = True
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        roll = torch.rand(input_ids.shape, generator=gen)
        random_tokens = torch.randint(vocab, input_ids.shape, generator=gen)
        masked = input_ids.clone()
        masked[selected & (roll < 0.8)] = mask_id
        swap = selected & (roll >= 0.8) & (roll < 0.9)
        masked[swap] = random_tokens[swap]
        batch = {"input_ids": masked, "attention_mask": attention, "token_type_ids": pad_stack(types, 0),
                 "labels": labels}
        if nsp:
            batch["next_sentence_label"] = torch.tensor([ex["next"] for ex in examples], dtype=torch.long)
        return batch

    return collate


def loss(model, batch):
    out = model(**batch)
    return out.loss, int((batch["labels"] != -100).sum())


def prepare(cfg: MLMConfig, base: str | None, source: DatasetSource, work_dir: Path) -> Prepared:
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, BertForMaskedLM, BertForPreTraining

    train_texts = [record_text(r) for r in source.records("train")]
    val_texts = [record_text(r) for r in source.records("validation")]
    tokenizer = load_tokenizer(base, train_texts, cfg.vocab_size)
    if base and not base.startswith("preset:"):
        model = (AutoModelForPreTraining if cfg.nsp else AutoModelForMaskedLM).from_pretrained(base)
    else:
        config = bert_config(preset_name(base, cfg.preset), len(tokenizer), cfg.seq_len, tokenizer.pad_token_id)
        model = BertForPreTraining(config) if cfg.nsp else BertForMaskedLM(config)
    train = build_examples(tokenizer, train_texts, cfg, cfg.seed)
    if not train:
        raise ValueError("no training examples (NSP needs records with at least two sentences)")
    return Prepared(model=model, train=train, validation=build_examples(tokenizer, val_texts, cfg, cfg.seed + 1),
                    collate=make_collate(tokenizer, cfg.mlm_probability, cfg.nsp), loss=loss,
                    save=lambda m, out: save_hf(m, tokenizer, out), tokenizer=tokenizer,
                    perplexity=not cfg.nsp, info={"nsp": cfg.nsp})
