"""Shared by the two encoder methods (masked LM and contrastive): BERT presets and the encoder tokenizer."""

from __future__ import annotations

from trainer.methods.base import train_bpe_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

PRESETS: dict[str, dict] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072},
}


def encoder_tokenizer(texts: list[str], vocab_size: int):
    return train_bpe_tokenizer(texts, vocab_size, SPECIALS, pad_token="[PAD]", unk_token="[UNK]",
                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def bert_config(preset: str, vocab_size: int, seq_len: int, pad_id: int):
    from transformers import BertConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; one of {', '.join(PRESETS)}")
    return BertConfig(vocab_size=vocab_size, max_position_embeddings=max(seq_len, 128), pad_token_id=pad_id,
                      type_vocab_size=2, **PRESETS[preset])


def load_tokenizer(base: str | None, texts: list[str], vocab_size: int):
    """The base model's tokenizer, or one trained on the dataset when starting from a preset."""
    if base and not base.startswith("preset:"):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(base)
    return encoder_tokenizer(texts, vocab_size)
