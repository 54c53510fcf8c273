"""Quality filters, each configurable, defaults after the Gopher rules (Rae et al. 2021, appendix A).

A record is kept or removed as a whole, with the first failing rule as its reason (which the quarantine and
the data card show); boilerplate *lines* are dropped from a record that is otherwise kept. Language detection
is py3langid (an offline model shipped in the wheel); texts too short to judge are not filtered by language.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from trainer.datasets.records import Record, joined_text, map_texts

DEFAULT_BOILERPLATE = (
    r"^(?:all rights reserved|alle rechte vorbehalten)\b",
    r"\b(?:we use cookies|diese (?:website|seite) verwendet cookies|accept (?:all )?cookies)\b",
    r"^(?:click here|hier klicken|read more|weiterlesen|subscribe to our newsletter|newsletter abonnieren)\b",
    r"^(?:impressum|datenschutz(?:erklärung)?|privacy policy|terms of (?:use|service))$",
    r"^(?:share on|teilen auf) (?:facebook|twitter|x|linkedin)\b",
    r"\benable javascript\b|\bjavascript (?:is )?(?:required|disabled)\b",
    r"^copyright ©|^© \d{4}",
)


@dataclass(frozen=True)
class QualityConfig:
    min_chars: int = field(default=10, metadata={"help": "Shorter records are removed."})
    max_chars: int = field(default=200_000, metadata={"help": "Longer records are removed."})
    min_words: int = field(default=2, metadata={"help": "Fewer words: removed."})
    max_duplicate_line_fraction: float = field(default=0.3, metadata={"help": "Gopher: lines that repeat."})
    max_duplicate_line_char_fraction: float = field(default=0.2, metadata={"help": "Gopher: chars in them."})
    max_top_ngram_fraction: tuple[float, float, float] = field(
        default=(0.20, 0.18, 0.16), metadata={"help": "Gopher: chars in the most frequent 2-, 3-, 4-gram."})
    max_duplicate_5gram_fraction: float = field(default=0.15, metadata={"help": "Gopher: chars in repeated "
                                                                        "5-grams."})
    ngram_min_words: int = field(default=20, metadata={"help": "N-gram rules apply from this many words."})
    max_symbol_word_ratio: float = field(default=0.1, metadata={"help": "'#' and ellipses per word."})
    min_alpha_word_fraction: float = field(default=0.5, metadata={"help": "Words with a letter, at least."})
    languages: tuple[str, ...] | None = field(default=("de", "en"), metadata={"help": "Allowed ISO 639-1 codes; "
                                                                               "None = any."})
    language_min_chars: int = field(default=40, metadata={"help": "Shorter texts are not judged by language."})
    boilerplate: tuple[str, ...] = field(default=DEFAULT_BOILERPLATE, metadata={"help": "Line patterns dropped."})

    @classmethod
    def from_dict(cls, raw: dict | None) -> QualityConfig:
        raw = dict(raw or {})
        if "languages" in raw and raw["languages"] is not None:
            raw["languages"] = tuple(raw["languages"])
        for key in ("max_top_ngram_fraction", "boilerplate"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)


_WORD = re.compile(r"\w+", re.UNICODE)
_PLACEHOLDER = re.compile(r"<[A-Z_]+_[0-9a-f]{12}>|\[[A-Z_]+\]")
_ALPHA_WORD = re.compile(r"(?<!\S)\S*?[^\W\d_]\S*", re.UNICODE)  # whitespace-separated words with a letter


class QualityFilter:
    """``check(record)`` -> ``(record_without_boilerplate, None)`` or ``(record, reason)``; counts languages."""

    def __init__(self, config: QualityConfig | None = None) -> None:
        self.config = config or QualityConfig()
        self._boiler = [re.compile(p, re.IGNORECASE) for p in self.config.boilerplate]
        self.languages: Counter[str] = Counter()
        self.last_language = "und"
        self.boilerplate_lines = 0
        self._langid = None

    def strip_boilerplate(self, text: str) -> str:
        if not self._boiler:
            return text
        kept = []
        for line in text.split("\n"):
            probe = line.strip()
            if probe and any(p.search(probe) for p in self._boiler):
                self.boilerplate_lines += 1
                continue
            kept.append(line)
        return "\n".join(kept).strip()

    def check(self, record: Record) -> tuple[Record, str | None]:
        """Also notes the detected language in ``meta.language`` (the language tag)."""
        record = map_texts(record, self.strip_boilerplate)
        text = joined_text(record)
        self.last_language = "und"
        reason = self.reason(text)
        if "meta" in record:
            record["meta"] = {**record["meta"], "language": self.last_language}
        return record, reason

    def reason(self, text: str) -> str | None:
        c = self.config
        if len(text) < c.min_chars:
            return "too_short"
        if len(text) > c.max_chars:
            return "too_long"
        words = text.split()
        if len(words) < c.min_words:
            return "too_few_words"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / len(words) > c.max_symbol_word_ratio:
            return "symbol_word_ratio"
        if len(_ALPHA_WORD.findall(text)) / len(words) < c.min_alpha_word_fraction:
            return "alpha_word_fraction"
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if len(lines) > 1:
            counts = Counter(lines)
            dup_lines = sum(n for n in counts.values() if n > 1)
            if dup_lines / len(lines) > c.max_duplicate_line_fraction:
                return "duplicate_lines"
            dup_chars = sum(len(ln) * n for ln, n in counts.items() if n > 1)
            if dup_chars / max(1, sum(len(ln) for ln in lines)) > c.max_duplicate_line_char_fraction:
                return "duplicate_line_chars"
        tokens = _WORD.findall(text.lower())
        if len(tokens) >= c.ngram_min_words:
            reason = self._ngram_reason(tokens)
            if reason:
                return reason
        if c.languages is not None and len(text) >= c.language_min_chars:
            lang = self.last_language = self.language(text)
            self.languages[lang] += 1
            if lang not in c.languages:
                return "language"
        else:
            self.languages["und"] += 1
        return None

    def _ngram_reason(self, tokens: list[str]) -> str | None:
        c = self.config
        total = sum(len(t) for t in tokens)
        for n, limit in zip((2, 3, 4), c.max_top_ngram_fraction, strict=True):
            grams = Counter(zip(*(tokens[k:] for k in range(n)), strict=False))
            top, count = grams.most_common(1)[0]
            if count > 1 and count * sum(len(t) for t in top) / total > limit:
                return f"top_{n}gram"
        grams5 = list(zip(*(tokens[k:] for k in range(5)), strict=False))
        counts = Counter(grams5)
        if len(counts) == len(grams5):  # no 5-gram repeats (most text): nothing to measure
            return None
        covered = [False] * len(tokens)
        for i, g in enumerate(grams5):
            if counts[g] > 1:
                for j in range(i, i + 5):
                    covered[j] = True
        dup_chars = sum(len(t) for t, cov in zip(tokens, covered, strict=True) if cov)
        if dup_chars / total > c.max_duplicate_5gram_fraction:
            return "duplicate_5grams"
        return None

    def language(self, text: str) -> str:
        if self._langid is None:
            import py3langid

            self._langid = py3langid.classify
        # PII stand-ins (<EMAIL_3fa9...>, [PHONE]) are no language; the first 600 characters are enough to tell
        return self._langid(_PLACEHOLDER.sub(" ", text)[:600])[0]
