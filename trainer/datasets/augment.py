"""Augmentation of the training split: counterfactual swaps of demographic terms (he <-> she, names, group words).

A swapped copy is added only when at least one term changed; it carries ``meta.augmented = "counterfactual"``,
``meta.synthetic = True`` and the content hash of its source, so provenance survives into the data card and
training can tell added rows from collected ones. Pairs live in ``terms/counterfactual.txt``.

Paraphrases come from a served model through the gateway's one inference entry point, called by the job with
the requester as principal (``trainer.datasets.tasks`` builds the ``paraphrase`` callable), so each call is
authorised, rate-limited and audited like the requester's own; here is only what to ask and how to mark it.
The answer is scrubbed for PII again before it is stored (a model can invent an address).

The same way (``ask(instruction, text) -> answer``, one inference call each):

* **back-translation**: the user-side text into a pivot language and back into the record's own language (two
  calls), a paraphrase that keeps the meaning but changes the wording the way translation does;
* **synthetic examples** for rare cases: for every label (or topic) with fewer than ``min_per_label`` rows in the
  training split, new rows written by the model from a few seed rows of that label; and for privacy-sensitive
  topics from a template instruction alone (no real rows needed). Chat and prompt/completion rows take two calls:
  the model writes the request, then answers it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from trainer.datasets.bias import TERMS_DIR
from trainer.datasets.records import Record, content_hash, map_texts

#: ``ask(instruction, text) -> answer``: one call through the gateway's inference entry point
Ask = Callable[[str, str], str]


@lru_cache(maxsize=1)
def swap_table() -> tuple[dict[str, str], re.Pattern[str]]:
    table: dict[str, str] = {}
    for ln in (TERMS_DIR / "counterfactual.txt").read_text(encoding="utf-8").splitlines():
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        a, _, b = ln.partition("=")
        a, b = a.strip().lower(), b.strip().lower()
        table.setdefault(a, b)
        table.setdefault(b, a)
    alternatives = "|".join(sorted((re.escape(w) for w in table), key=len, reverse=True))
    return table, re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def _keep_case(original: str, replacement: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def swap_text(text: str) -> tuple[str, int]:
    table, pattern = swap_table()
    count = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return _keep_case(m.group(), table[m.group().lower()])

    return pattern.sub(sub, text), count


def counterfactual(record: Record) -> Record | None:
    changed = 0

    def fn(text: str) -> str:
        nonlocal changed
        out, n = swap_text(text)
        changed += n
        return out

    swapped = map_texts(record, fn)
    if not changed:
        return None
    swapped["meta"] = {"augmented": "counterfactual", "synthetic": True,
                       "source": content_hash(record).hex()[:16], "swaps": changed}
    return swapped


def with_counterfactuals(records: Iterator[Record], stats: dict[str, int]) -> Iterator[Record]:
    for r in records:
        yield r
        extra = counterfactual(r)
        if extra is not None:
            stats["counterfactual"] = stats.get("counterfactual", 0) + 1
            yield extra


PARAPHRASE_PROMPT = ("Rewrite the following text so that it says the same thing in different words. Answer with the "
                     "rewritten text only.")


def _rewrite_user_side(record: Record, fn: Callable[[str], str]) -> Record:
    """A copy with the user-side text (chat: user turns; prompt/completion: the prompt; text: all) rewritten."""
    out = dict(record)
    if "messages" in record:
        out["messages"] = [{**m, "content": fn(m["content"])} if m.get("role") == "user" else dict(m)
                           for m in record["messages"]]
    elif "prompt" in record:
        out["prompt"] = fn(record["prompt"])
    else:
        out["text"] = fn(record["text"])
    return out


def paraphrased(record: Record, paraphrase: Callable[[str], str], model: str) -> Record | None:
    """A copy with the user-side text rewritten by ``paraphrase``; None when nothing changed."""
    out = _rewrite_user_side(record, paraphrase)
    if out == record:
        return None
    out["meta"] = {"augmented": "paraphrase", "synthetic": True, "model": model,
                   "source": content_hash(record).hex()[:16]}
    return out


TRANSLATE_PROMPT = "Translate the following text into {language}. Answer with the translation only."
LANGUAGES = {"de": "German", "en": "English", "fr": "French", "es": "Spanish", "it": "Italian", "nl": "Dutch",
             "pl": "Polish", "pt": "Portuguese", "sv": "Swedish", "da": "Danish", "cs": "Czech", "tr": "Turkish"}


def pivot_for(language: str, pivot: str) -> str:
    """The pivot language: the configured one, unless the record is already in it (then English or German)."""
    if language != pivot:
        return pivot
    return "de" if pivot == "en" else "en"


def backtranslated(record: Record, ask: Ask, model: str, pivot: str, language: str) -> Record | None:
    """The user-side text translated into ``pivot`` and back into ``language`` (the record's own; ``und``:
    English); None when nothing changed."""
    back = language if language in LANGUAGES else "en"
    via = pivot_for(back, pivot)

    def round_trip(text: str) -> str:
        there = ask(TRANSLATE_PROMPT.format(language=LANGUAGES.get(via, via)), text)
        return ask(TRANSLATE_PROMPT.format(language=LANGUAGES[back]), there)

    out = _rewrite_user_side(record, round_trip)
    if out == record:
        return None
    out["meta"] = {"augmented": "backtranslation", "synthetic": True, "model": model, "pivot": via,
                   "source": content_hash(record).hex()[:16]}
    return out


@dataclass(frozen=True)
class SyntheticConfig:
    """``augment: synthetic``: which cases are rare and how many rows to add for them."""

    #: a label (or topic) with fewer training rows than this gets synthetic rows up to it
    min_per_label: int = 5
    #: "label" or "topic": what defines a case
    by: str = "label"
    #: seed rows shown to the model per case
    seeds: int = 3
    #: ``[{"label": ..., "instruction": "Write a customer message about ...", "count": 3}]``: rows from an
    #: instruction alone, for privacy-sensitive topics where no real row should be shown to a model
    templates: tuple[dict, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, raw: dict | None) -> SyntheticConfig:
        raw = dict(raw or {})
        templates = tuple(dict(t) for t in raw.pop("templates", None) or ())
        for t in templates:
            if not t.get("instruction") or not t.get("label"):
                raise ValueError("synthetic.templates: each needs 'label' and 'instruction'")
        out = cls(templates=templates, **raw)
        if out.by not in ("label", "topic"):
            raise ValueError("synthetic.by: label or topic")
        return out


SYNTHETIC_PROMPT = ("Below are examples of {what}. Write one new example of the same kind, different from all of "
                    "them, realistic, with invented details and no real names, addresses or numbers. Answer with "
                    "the new example only.")
ANSWER_PROMPT = "Answer the following request helpfully and concisely."


def synthesised(kind: str, ask: Ask, model: str, *, case: str, seeds: list[Record] | None = None,
                instruction: str | None = None) -> Record:
    """One new row of ``kind`` for ``case``, from seed rows (their user-side text) or a template instruction."""
    if instruction is not None:
        system, shown = instruction, ""
    else:
        what = {"chat": "user requests", "prompt_completion": "prompts"}.get(kind, "texts")
        system = SYNTHETIC_PROMPT.format(what=what)
        shown = "\n\n".join(f"Example {i}:\n{_user_side(s)}" for i, s in enumerate(seeds or [], start=1))
    first = ask(system, shown or case)
    if kind == "chat":
        row: Record = {"messages": [{"role": "user", "content": first},
                                    {"role": "assistant", "content": ask(ANSWER_PROMPT, first)}]}
    elif kind == "prompt_completion":
        row = {"prompt": first, "completion": ask(ANSWER_PROMPT, first)}
    else:
        row = {"text": first}
    row["meta"] = {"augmented": "synthetic", "synthetic": True, "model": model, "case": case,
                   "seeds": [content_hash(s).hex()[:16] for s in seeds or []],
                   "template": instruction is not None}
    return row


def _user_side(record: Record) -> str:
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"] if m.get("role") == "user")
    return record.get("prompt") if "prompt" in record else record.get("text", "")

