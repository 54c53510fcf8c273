"""Encoder-decoder (T5-style): span-corruption pretraining, or seq2seq fine-tuning on (input, target) pairs.

Span corruption (T5 §3.1.4): about ``noise_density`` of each example's tokens, in spans of mean length
``mean_span_length``, are replaced in the input by one sentinel each (``<extra_id_0>``, ``<extra_id_1>``…);
the target lists each sentinel followed by the tokens it hid. The spans are drawn at batch time from the
loop's data generator, so a resumed run corrupts exactly as the uninterrupted one.
Seq2seq fine-tuning (summarisation, translation): input = prompt, target = completion.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.methods.base import Prepared, pad_stack, preset_name, save_hf, train_bpe_tokenizer
from trainer.methods.configs import Seq2SeqConfig
from trainer.runs.data import DatasetSource, record_pair, record_text

N_SENTINELS = 32

PRESETS: dict[str, dict] = {
    "tiny": {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4},
    "small": {"d_model": 256, "d_ff": 1024, "d_kv": 32, "num_layers": 4, "num_decoder_layers": 4, "num_heads": 8},
    "t5-small": {"d_model": 512, "d_ff": 2048, "d_kv": 64, "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8},
}


def t5_tokenizer(texts: list[str], vocab_size: int):
    sentinels = [f"<extra_id_{i}>" for i in range(N_SENTINELS)]
    tok = train_bpe_tokenizer(texts, vocab_size, ["<pad>", "</s>", "<unk>", *sentinels], pad_token="<pad>",
                              eos_token="</s>", unk_token="<unk>", additional_special_tokens=sentinels)
    return tok


def sentinel_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(N_SENTINELS)]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("tokenizer has no <extra_id_N> sentinel tokens")
    return ids


def corrupt(ids: list[int], density: float, mean_span: float, sentinels: list[int], eos: int,
            gen: torch.Generator) -> tuple[list[int], list[int]]:
    """(input, target) of one span-corrupted example."""
    n = len(ids)
    n_noise = max(1, round(n * density))
    n_spans = max(1, min(len(sentinels), round(n_noise / mean_span)))
    span = max(1, n_noise // n_spans)
    starts = sorted(torch.randperm(max(1, n - span + 1), generator=gen)[:n_spans].tolist())
    noise = [False] * n
    for s in starts:
        for j in range(s, min(n, s + span)):
            noise[j] = True
    inputs, targets, k, i = [], [], 0, 0
    while i < n:
        if noise[i] and k < len(sentinels):
            inputs.append(sentinels[k])
            targets.append(sentinels[k])
            while i < n and noise[i]:
                targets.append(ids[i])
                i += 1
            k += 1
        else:
            inputs.append(ids[i])
            i += 1
    return inputs + [eos], targets + [eos]


def make_collate(tokenizer, cfg: Seq2SeqConfig, span_corruption: bool):
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    sentinels = sentinel_ids(tokenizer) if span_corruption else []

    def collate(examples: list, gen: torch.Generator) -> dict[str, torch.Tensor]:
        if span_corruption:
            pairs = [corrupt(ids, cfg.noise_density, cfg.mean_span_length, sentinels, eos, gen) for ids in examples]
        else:
            pairs = examples
        inputs = [p[0] for p in pairs]
        targets = [p[1][: cfg.target_len] for p in pairs]
        return {"input_ids": pad_stack(inputs, pad),  # (B, S)
                "attention_mask": pad_stack([[1] * len(x) for x in inputs], 0),
                "labels": pad_stack(targets, -100)}  # (B, T); the model shifts right for decoder inputs

    return collate


def loss(model, batch):
    return model(**batch).loss, int((batch["labels"] != -100).sum())


def prepare(cfg: Seq2SeqConfig, base: str | None, source: DatasetSource, work_dir: Path) -> Prepared:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

    records = list(source.records("train"))
    val_records = list(source.records("validation"))
    objective = cfg.objective
    if objective == "auto":
        objective = "seq2seq" if records and all(record_pair(r) for r in records) else "span_corruption"
    if objective not in {"seq2seq", "span_corruption"}:
        raise ValueError(f"unknown objective {objective!r}")
    if base and not base.startswith("preset:"):
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSeq2SeqLM.from_pretrained(base)
    else:
        tokenizer = t5_tokenizer([record_text(r) for r in records], cfg.vocab_size)
        preset = preset_name(base, cfg.preset)
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; one of {', '.join(PRESETS)}")
        model = T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    decoder_start_token_id=tokenizer.pad_token_id, **PRESETS[preset]))
    enc = lambda s, n: tokenizer(s, add_special_tokens=False)["input_ids"][:n]  # noqa: E731

    def examples(recs):
        if objective == "span_corruption":
            return [ids for ids in (enc(record_text(r), cfg.seq_len - 1) for r in recs) if len(ids) >= 2]
        out = []
        for r in recs:
            pair = record_pair(r)
            if pair:
                out.append((enc(pair[0], cfg.seq_len - 1) + [tokenizer.eos_token_id],
                            enc(pair[1], cfg.target_len - 1) + [tokenizer.eos_token_id]))
        return out

    train = examples(records)
    if not train:
        raise ValueError("no training examples for " + objective)
    return Prepared(model=model, train=train, validation=examples(val_records),
                    collate=make_collate(tokenizer, cfg, objective == "span_corruption"), loss=loss,
                    save=lambda m, out: save_hf(m, tokenizer, out), tokenizer=tokenizer,
                    info={"family": "seq2seq", "objective": objective})
