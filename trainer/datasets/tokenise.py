"""Tokenise and pack: records -> token ids -> fixed-length sequences that keep document boundaries.

Tokenizers: a base model's (a local model folder, loaded offline; chat records go through its chat template) or
a new byte-level BPE tokenizer trained with ``tokenizers`` on the training split (pretraining from scratch).

Packing concatenates documents into rows of ``seq_len`` tokens; each row carries ``cu_seqlens`` (cumulative
document lengths inside the row, the shape flash-attention's varlen kernels and a block-diagonal mask take), so
attention never crosses a document boundary. A document longer than a row is segmented across rows.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.datasets.records import Record


@dataclass(frozen=True)
class TokeniseConfig:
    tokenizer: str | None = None  # a local model folder, or "bpe:<vocab size>"; None = no tokenising
    seq_len: int = 1024
    rows_per_shard: int = 4096

    @classmethod
    def from_dict(cls, raw: dict | None) -> TokeniseConfig:
        return cls(**(raw or {}))


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


class Encoder:
    """``encode(record) -> list[int]`` for a transformers tokenizer or a trained ``tokenizers.Tokenizer``."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.hf = hasattr(tokenizer, "apply_chat_template")
        if self.hf:
            self.eos = tokenizer.eos_token_id
        else:
            self.eos = tokenizer.token_to_id("<|endoftext|>")

    def _ids(self, text: str) -> list[int]:
        if self.hf:
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return self.tok.encode(text).ids

    def encode(self, record: Record) -> list[int]:
        if "messages" in record and self.hf and getattr(self.tok, "chat_template", None):
            ids = self.tok.apply_chat_template(record["messages"], tokenize=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        elif "messages" in record:
            ids = self._ids("\n".join(f"{m['role']}: {m['content']}" for m in record["messages"]))
        elif "prompt" in record:
            ids = self._ids(record["prompt"]) + self._ids(record["completion"])
        else:
            ids = self._ids(record["text"])
        if self.eos is not None and (not ids or ids[-1] != self.eos):
            ids.append(self.eos)
        return ids


def pack(docs: Iterable[list[int]], seq_len: int) -> Iterator[tuple[list[int], list[int]]]:
    """Rows of exactly ``seq_len`` tokens (the last one padded with 0) and their cumulative document lengths."""
    row: list[int] = []
    cu = [0]
    for ids in docs:
        pos = 0
        while pos < len(ids):
            take = min(seq_len - len(row), len(ids) - pos)
            row.extend(ids[pos:pos + take])
            cu.append(len(row))
            pos += take
            if len(row) == seq_len:
                yield row, cu
                row, cu = [], [0]
    if row:
        yield row + [0] * (seq_len - len(row)), cu


def pack_bytes(rows: list[tuple[list[int], list[int]]]) -> bytes:
    """One shard of packed rows as an ``.npz`` (no pickles): ``input_ids`` (N, L) and ragged ``cu_seqlens``."""
    ids = np.asarray([r for r, _ in rows], dtype=np.uint32)
    flat = np.asarray([c for _, cu in rows for c in cu], dtype=np.int32)
    offsets = np.cumsum([0] + [len(cu) for _, cu in rows]).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, input_ids=ids, cu_seqlens=flat, cu_offsets=offsets)
    return buf.getvalue()


def unpack_bytes(data: bytes) -> tuple[np.ndarray, list[np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        ids, flat, offsets = z["input_ids"], z["cu_seqlens"], z["cu_offsets"]
    return ids, [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
