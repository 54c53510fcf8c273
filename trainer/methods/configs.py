"""Every hyperparameter of every method, in one file you can read top to bottom (nanoGPT style).

``LoopConfig`` holds what the shared loop needs; each method's config adds its own fields. Every field carries
its help text in ``metadata["help"]`` (the CLI prints it). ``config_for(method, overrides)`` builds the config
of a method from a run request's ``config`` mapping and ``--set key=value`` strings, rejecting unknown keys.

Fine-tuning starts from weights that already work, so its default learning rate is far lower than
pretraining's (2e-5 full fine-tuning, 2e-4 LoRA adapters, 3e-4/1e-3 from scratch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best here
    return field(default=default, metadata={"help": help})


@dataclass
class LoopConfig:
    # --- length of training -----------------------------------------------------------------------------
    max_steps: int = _f(0, "Optimizer steps to train; 0 = derive from `epochs`.")
    epochs: float = _f(1.0, "Passes over the training split (used when max_steps is 0).")
    # --- optimisation (AdamW, linear warmup then cosine decay) ----------------------------------------------
    learning_rate: float = _f(3e-4, "Peak learning rate after warmup.")
    min_lr_ratio: float = _f(0.1, "Cosine decays to learning_rate * min_lr_ratio.")
    warmup_ratio: float = _f(0.05, "Fraction of steps spent warming up linearly from 0.")
    weight_decay: float = _f(0.01, "AdamW decoupled weight decay (not applied to biases and norms).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.95, "AdamW beta2.")
    max_grad_norm: float = _f(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    # --- batches ----------------------------------------------------------------------------------------
    batch_size: int = _f(8, "Examples per micro-batch (per process).")
    grad_accum_steps: int = _f(1, "Micro-batches per optimizer step.")
    seq_len: int = _f(512, "Maximum tokens per example (longer examples are truncated).")
    # --- numerics and speed -----------------------------------------------------------------------------
    bf16: bool = _f(True, "bf16 autocast on GPU (ignored on CPU, which trains in fp32).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward: less memory, ~30% slower.")
    compile: bool = _f(False, "torch.compile the model (pays off on GPU for long runs).")
    seed: int = _f(1234, "Seeds weights init, data order, masking and dropout.")
    # --- bookkeeping ------------------------------------------------------------------------------------
    checkpoint_every: int = _f(100, "Save a resumable checkpoint every N steps (and always on cancel).")
    eval_every: int = _f(100, "Evaluate on the validation split every N steps (and at the end).")
    eval_max_batches: int = _f(50, "Validation batches per evaluation (bounds its cost).")


@dataclass
class SFTConfig(LoopConfig):
    """Supervised fine-tuning of a causal LM on chat data; loss on assistant tokens only."""

    learning_rate: float = _f(2e-4, "Peak learning rate (2e-4 suits LoRA; use ~2e-5 for full fine-tuning).")
    lora: bool = _f(True, "Train LoRA adapters (peft) instead of all weights.")
    lora_rank: int = _f(16, "LoRA rank r.")
    lora_alpha: int = _f(32, "LoRA scaling alpha (effective scale alpha / r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA branch.")
    lora_target: str = _f("all-linear", "Modules that get adapters: 'all-linear' or comma-separated names.")
    packing: bool = _f(False, "Pack whole conversations into seq_len rows (never split one across rows).")
    merge_adapter: bool = _f(False, "Also write the base with the adapter merged into it.")


@dataclass
class PretrainCLMConfig(LoopConfig):
    """A causal LM from a size preset, with a byte-level BPE tokenizer trained on the dataset itself."""

    preset: str = _f("tiny", "Size preset: tiny, small, smollm2-135m.")
    vocab_size: int = _f(8000, "BPE vocabulary size of the tokenizer trained on the dataset.")
    learning_rate: float = _f(1e-3, "Peak learning rate (small models from scratch tolerate a high one).")


@dataclass
class MLMConfig(LoopConfig):
    """A BERT-style bidirectional encoder: masked-token prediction, optionally next-sentence prediction."""

    preset: str = _f("tiny", "Size preset when no base is given: tiny, small, bert-base.")
    vocab_size: int = _f(8000, "Vocabulary of the tokenizer trained on the dataset (no base).")
    mlm_probability: float = _f(0.15, "Fraction of tokens selected for prediction (80% [MASK], 10% random, 10% kept).")
    nsp: bool = _f(False, "Add next-sentence prediction on sentence pairs (50% real next, 50% random).")
    learning_rate: float = _f(1e-3, "Peak learning rate.")


@dataclass
class ContrastiveConfig(LoopConfig):
    """A sentence encoder trained on (anchor, positive) pairs with in-batch negatives (InfoNCE)."""

    preset: str = _f("tiny", "Encoder size preset when no base is given.")
    vocab_size: int = _f(8000, "Vocabulary of the tokenizer trained on the dataset (no base).")
    temperature: float = _f(0.05, "Softmax temperature over cosine similarities.")
    symmetric: bool = _f(True, "Also score positives against anchors (loss averaged over both directions).")
    learning_rate: float = _f(5e-4, "Peak learning rate.")


@dataclass
class Seq2SeqConfig(LoopConfig):
    """An encoder-decoder (T5-style): span-corruption pretraining or seq2seq fine-tuning."""

    objective: str = _f("auto", "span_corruption, seq2seq, or auto (seq2seq when records have targets).")
    preset: str = _f("tiny", "Size preset when no base is given: tiny, small, t5-small.")
    vocab_size: int = _f(8000, "Vocabulary of the tokenizer trained on the dataset (no base).")
    noise_density: float = _f(0.15, "Span corruption: fraction of tokens masked.")
    mean_span_length: float = _f(3.0, "Span corruption: mean length of a masked span.")
    target_len: int = _f(128, "Maximum target tokens.")
    learning_rate: float = _f(1e-3, "Peak learning rate (use ~3e-4 when fine-tuning a base).")


CONFIGS: dict[str, type[LoopConfig]] = {
    "sft-lora": SFTConfig,
    "sft-full": SFTConfig,
    "pretrain-clm": PretrainCLMConfig,
    "pretrain-mlm": MLMConfig,
    "contrastive": ContrastiveConfig,
    "seq2seq": Seq2SeqConfig,
}

#: Per-method defaults that differ from the config class (sft-full: all weights, a lower learning rate).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {"sft-full": {"lora": False, "learning_rate": 2e-5}}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    name = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if name == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in {"1", "true", "yes", "on"}:
                return True
            if str(value).lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if name == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if name == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key} must be {name}, got {value!r}") from exc


def config_for(method: str, overrides: dict[str, Any] | None = None) -> LoopConfig:
    """The method's config with defaults, then ``overrides`` (validated and coerced; unknown keys refused)."""
    cls = CONFIGS.get(method)
    if cls is None:
        raise ValueError(f"unknown method {method!r}")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    values = dict(METHOD_DEFAULTS.get(method, {}))
    for key, value in (overrides or {}).items():
        if key not in types:
            raise ValueError(f"unknown setting {key!r} for {method}; known: {', '.join(sorted(types))}")
        values[key] = _coerce(value, types[key], key)
    cfg = cls(**values)
    if cfg.batch_size < 1 or cfg.grad_accum_steps < 1 or cfg.seq_len < 8:
        raise ValueError("batch_size and grad_accum_steps must be >= 1 and seq_len >= 8")
    if cfg.learning_rate <= 0 or cfg.max_steps < 0 or cfg.epochs <= 0:
        raise ValueError("learning_rate and epochs must be > 0 and max_steps >= 0")
    return cfg


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """``["max_steps=10", "learning_rate=1e-4"]`` -> mapping (values coerced later by ``config_for``)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def help_text(method: str) -> list[tuple[str, Any, str]]:
    """(name, default, help) of each field of a method's config, for the CLI."""
    return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(CONFIGS[method])]
