"""Pretraining a causal LM (Llama architecture) from a size preset with the dataset's own BPE tokenizer.

The tokenizer is a byte-level BPE trained on the training split with ``tokenizers`` (so any text round-trips),
the documents are concatenated with an end-of-text token between them and cut into ``seq_len`` blocks
(standard GPT-style packing: blocks may span documents; the separator tells the model where one ends).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.methods.base import Prepared, lm_loss, preset_name, save_hf, train_bpe_tokenizer
from trainer.methods.configs import PretrainCLMConfig
from trainer.runs.data import DatasetSource, record_text

EOT = "<|endoftext|>"

#: Llama shapes. smollm2-135m matches SmolLM2-135M (the MFU benchmark's model).
PRESETS: dict[str, dict] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 100000.0},
}


def llama_config(preset: str, vocab_size: int, seq_len: int, eot_id: int):
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; one of {', '.join(PRESETS)}")
    return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=max(seq_len, 256), bos_token_id=eot_id,
                       eos_token_id=eot_id, pad_token_id=eot_id, tie_word_embeddings=True, **PRESETS[preset])


def blocks(tokenizer, texts: list[str], seq_len: int) -> list[list[int]]:
    """Concatenate documents (EOT between them) and cut into full blocks of seq_len tokens."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    out = [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    return out or ([stream] if stream else [])


def collate(rows: list[list[int]], _gen: torch.Generator) -> dict[str, torch.Tensor]:
    width = min(len(r) for r in rows)  # only the last short block can differ; keep the batch rectangular
    ids = torch.tensor([r[:width] for r in rows], dtype=torch.long)  # (B, T)
    return {"input_ids": ids, "labels": ids.clone()}


def prepare(cfg: PretrainCLMConfig, base: str | None, source: DatasetSource, work_dir: Path) -> Prepared:
    from transformers import LlamaForCausalLM

    if base and not base.startswith("preset:"):
        raise ValueError("pretrain-clm starts from a size preset (base 'preset:tiny|small|smollm2-135m')")
    train_texts = [record_text(r) for r in source.records("train")]
    if not train_texts:
        raise ValueError("the training split is empty")
    tokenizer = train_bpe_tokenizer(train_texts, cfg.vocab_size, [EOT], eos_token=EOT, bos_token=EOT,
                                    pad_token=EOT, unk_token=EOT)
    tokenizer.model_max_length = cfg.seq_len
    config = llama_config(preset_name(base, cfg.preset), len(tokenizer), cfg.seq_len, tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    train = blocks(tokenizer, train_texts, cfg.seq_len)
    validation = blocks(tokenizer, [record_text(r) for r in source.records("validation")], cfg.seq_len)
    return Prepared(model=model, train=train, validation=validation, collate=collate, loss=lm_loss,
                    save=lambda m, out: save_hf(m, tokenizer, out), tokenizer=tokenizer,
                    info={"family": "causal", "preset": preset_name(base, cfg.preset), "vocab_size": len(tokenizer),
                          "parameters": sum(p.numel() for p in model.parameters())})
