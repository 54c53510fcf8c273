"""What a method hands the shared loop, plus the pieces several methods share (tokenizers, presets, saving).

A method turns (config, base, dataset) into a ``Prepared``: the model, the train and validation examples in
a fixed order (the loop shuffles them with its own seeded generator, so resume can replay the order), a
``collate`` that builds a batch (and may draw random masks from the generator it is given, whose state the
checkpoint keeps), a ``loss`` and a ``save`` for the final artefacts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


@dataclass
class Prepared:
    model: nn.Module
    train: list[Any]
    validation: list[Any]
    collate: Callable[[list[Any], torch.Generator], Batch]
    #: (mean loss over the batch, number of target tokens it covered)
    loss: Callable[[nn.Module, Batch], tuple[torch.Tensor, int]]
    #: write the final model (weights as safetensors, config, tokenizer) into a directory
    save: Callable[[nn.Module, Path], None]
    tokenizer: Any = None
    #: the loss is a token-level cross-entropy, so exp(loss) is a perplexity
    perplexity: bool = True
    info: dict[str, Any] = field(default_factory=dict)


def lm_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Loss of a transformers model that takes ``labels`` (-100 = ignored), and the target-token count."""
    out = model(**batch)
    labels = batch["labels"]
    # causal LMs shift labels by one inside the model; counting all non-ignored labels is close enough for tok/s
    return out.loss, int((labels != -100).sum())


def pad_stack(rows: list[list[int]], pad: int, length: int | None = None) -> torch.Tensor:
    """Right-pad integer rows into a (B, T) tensor."""
    width = length or max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r[:width], dtype=torch.long)
    return out


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: list[str], *, byte_level: bool = True,
                        **special_map: str):
    """A BPE tokenizer trained on the dataset's own text with ``tokenizers`` (no download)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None if byte_level else special_map.get("unk_token")))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=special_tokens,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **special_map)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_hf(model: nn.Module, tokenizer: Any, out: Path) -> None:
    """``save_pretrained`` in safetensors (handles tied weights), plus the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def is_preset(base: str | None) -> bool:
    return base is None or base == "" or base.startswith("preset:")


def preset_name(base: str | None, default: str) -> str:
    if base and base.startswith("preset:"):
        return base.split(":", 1)[1]
    return default
