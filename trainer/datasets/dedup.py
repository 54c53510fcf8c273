"""Duplicates: exact (sha256 of the normalised content) then near (MinHash LSH over word 5-gram shingles).

Near duplicates keep the first record of each cluster (input order), so the result is deterministic. LSH with
112 permutations is split by datasketch into bands that minimise false positives and negatives around the
Jaccard threshold (0.8 by default). Memory: exact dedup holds 16 bytes per kept record; the LSH index holds a
few band hashes per kept record, which bounds the whole run by the number of distinct records, not by bytes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from trainer.datasets.records import Record, content_hash, joined_text

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    num_perm: int = 112
    threshold: float = 0.8
    shingle_words: int = 5

    @classmethod
    def from_dict(cls, raw: dict | None) -> DedupConfig:
        return cls(**(raw or {}))


class ExactDedup:
    def __init__(self) -> None:
        self._seen: set[bytes] = set()
        self.removed = 0

    def is_duplicate(self, record: Record) -> bool:
        key = content_hash(record)[:16]
        if key in self._seen:
            self.removed += 1
            return True
        self._seen.add(key)
        return False


def shingles(text: str, n: int = 5) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def minhash(text: str, num_perm: int = 112, n: int = 5) -> MinHash:
    m = MinHash(num_perm=num_perm)
    m.update_batch(list(shingles(text, n)))
    return m


class NearDedup:
    """``is_duplicate(record)``: True when a kept record is estimated at or above the Jaccard threshold."""

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        self.lsh = MinHashLSH(threshold=self.config.threshold, num_perm=self.config.num_perm)
        self._next = 0
        self.cluster_sizes: Counter[int] = Counter()  # kept record key -> duplicates removed for it
        self.removed = 0

    def is_duplicate(self, record: Record) -> bool:
        m = minhash(joined_text(record), self.config.num_perm, self.config.shingle_words)
        hits = self.lsh.query(m)
        if hits:
            self.removed += 1
            self.cluster_sizes[min(hits)] += 1
            return True
        self.lsh.insert(self._next, m, check_duplication=False)
        self._next += 1
        return False

    @property
    def clusters(self) -> int:
        return len(self.cluster_sizes)
