"""Deterministic train/validation split by content hash: the same record lands in the same split in every run
and every version, so a validation example never leaks into a later version's training split."""

from __future__ import annotations

from trainer.datasets.records import Record, content_hash


def split_of(record: Record, validation_fraction: float) -> str:
    bucket = int.from_bytes(content_hash(record)[:8], "big") / 2**64
    return "validation" if bucket < validation_fraction else "train"
