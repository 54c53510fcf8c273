"""Supervised fine-tuning of a causal LM on chat data (``sft-lora`` and ``sft-full``).

Each conversation is rendered with the model's own chat template; only the assistant turns' tokens (their
content and end-of-turn marker, not the ``assistant`` header) carry labels, everything else is -100. The
assistant spans are found on the rendered text (render the prefix up to each assistant turn with the
generation prompt, render through the turn, the difference is the turn) and mapped to tokens by offsets, so
any template works without special-casing it.

``lora=True`` trains peft LoRA adapters on all linear layers and saves only the adapter; ``lora=False``
trains every weight. ``packing=True`` fills rows with whole conversations (a conversation is never split across
rows; position ids restart at each one).

Example: ``python -m trainer.runs.worker RUN_DIR`` with ``{"method": "sft-lora", "base": "/models/smollm2", ...}``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.methods.base import Prepared, lm_loss, pad_stack, save_hf
from trainer.methods.configs import SFTConfig
from trainer.runs.data import DatasetSource

IGNORE = -100


def to_messages(record: dict) -> list[dict] | None:
    if "messages" in record:
        return [{"role": m["role"], "content": str(m["content"])} for m in record["messages"]]
    if "prompt" in record and "completion" in record:
        return [{"role": "user", "content": str(record["prompt"])},
                {"role": "assistant", "content": str(record["completion"])}]
    return None


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(through) or not through.startswith(head):
            raise ValueError("chat template does not render prefixes consistently; cannot mask non-assistant tokens")
        # the template's trailing newline after the end-of-turn token is not part of the answer
        end = len(through.rstrip("\n")) if through.endswith("\n") else len(through)
        spans.append((len(head), end))
    return text, spans


def encode_chat(tokenizer, messages: list[dict], seq_len: int) -> dict[str, list[int]]:
    """input_ids and labels (assistant tokens only) of one conversation, truncated to seq_len."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:seq_len]
    labels = []
    for tok_id, (start, _end) in zip(ids, enc["offset_mapping"][:seq_len], strict=False):
        inside = any(a <= start < b for a, b in spans)
        labels.append(tok_id if inside else IGNORE)
    return {"input_ids": ids, "labels": labels}


def encode_text(tokenizer, text: str, seq_len: int) -> dict[str, list[int]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: seq_len - 1] + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": list(ids)}


def encode_records(tokenizer, records, seq_len: int) -> list[dict[str, list[int]]]:
    out = []
    for rec in records:
        messages = to_messages(rec)
        ex = encode_chat(tokenizer, messages, seq_len) if messages else encode_text(tokenizer, rec["text"], seq_len)
        if any(label != IGNORE for label in ex["labels"]):
            out.append(ex)
    return out


def pack(examples: list[dict[str, list[int]]], seq_len: int) -> list[dict[str, list[int]]]:
    """Greedy first-fit of whole examples into rows of at most seq_len tokens; positions restart per example."""
    rows: list[dict[str, list[int]]] = []
    for ex in examples:
        n = len(ex["input_ids"])
        for row in rows:
            if len(row["input_ids"]) + n <= seq_len:
                break
        else:
            row = {"input_ids": [], "labels": [], "position_ids": []}
            rows.append(row)
        row["input_ids"] += ex["input_ids"]
        # the first token of a packed example must not be predicted from the previous example's last token
        row["labels"] += [IGNORE] + ex["labels"][1:]
        row["position_ids"] += list(range(n))
    return rows


def make_collate(pad_id: int):
    def collate(examples: list[dict], _gen: torch.Generator) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": pad_stack([e["input_ids"] for e in examples], pad_id),  # (B, T)
            "labels": pad_stack([e["labels"] for e in examples], IGNORE),  # (B, T)
            "attention_mask": pad_stack([[1] * len(e["input_ids"]) for e in examples], 0),  # (B, T)
        }
        if "position_ids" in examples[0]:
            batch["position_ids"] = pad_stack([e["position_ids"] for e in examples], 0)
        return batch

    return collate


def prepare(cfg: SFTConfig, base: str | None, source: DatasetSource, work_dir: Path) -> Prepared:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not base or base.startswith("preset:"):
        raise ValueError("sft needs a base model (a registry version or the built-in model), not a size preset")
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the base model's tokenizer has no chat template")
    dtype = torch.bfloat16 if (cfg.lora and cfg.bf16 and torch.cuda.is_available()) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)

    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        target = "all-linear" if cfg.lora_target == "all-linear" else [t.strip() for t in cfg.lora_target.split(",")]
        model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, target_modules=target,
                                                 task_type="CAUSAL_LM"))

    train = encode_records(tokenizer, source.records("train"), cfg.seq_len)
    validation = encode_records(tokenizer, source.records("validation"), cfg.seq_len)
    if not train:
        raise ValueError("the training split has no example with an assistant turn or text")
    if cfg.packing:
        train, validation = pack(train, cfg.seq_len), pack(validation, cfg.seq_len)

    def save(m, out: Path) -> None:
        save_hf(m, tokenizer, out)  # a peft model writes adapter_model.safetensors + adapter_config.json
        if cfg.lora and cfg.merge_adapter:
            save_hf(m.merge_and_unload(), tokenizer, out / "merged")

    return Prepared(model=model, train=train, validation=validation, collate=make_collate(tokenizer.pad_token_id),
                    loss=lm_loss, save=save, tokenizer=tokenizer,
                    info={"family": "causal", "lora": cfg.lora, "base": base, "packing": cfg.packing})
