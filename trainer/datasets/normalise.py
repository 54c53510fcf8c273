"""Normalise: mojibake repair (ftfy), Unicode NFC, whitespace.

Done first so every later stage (PII patterns, filters, hashes for dedup) sees one spelling of the same text:
"doesnâ€™t" and "doesn't", "e\\u0301" and "é", tabs and runs of spaces all compare equal afterwards.
"""

from __future__ import annotations

import re
import unicodedata

import ftfy

from trainer.datasets.records import Record, map_texts

_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_ZERO_WIDTH = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")
_BLANKS = re.compile(r"\n{3,}")
_FTFY = ftfy.TextFixerConfig(normalization="NFC", explain=False)


def normalise_text(text: str) -> str:
    if not text.isascii():
        text = ftfy.fix_text(text, _FTFY)
        text = unicodedata.normalize("NFC", _ZERO_WIDTH.sub("", text))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


def normalise(record: Record) -> Record:
    return map_texts(record, normalise_text)
