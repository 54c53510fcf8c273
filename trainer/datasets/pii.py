"""PII: find personal data in text and redact, mask or pseudonymise it, counting what was found by type.

Detectors are regular expressions confirmed by checksums or a maintained parser, all offline:

| type | how it is found |
| --- | --- |
| ``EMAIL`` | RFC-5322-ish pattern (no DNS or public-suffix lookup, which would hang offline) |
| ``PHONE`` | Google's libphonenumber (``phonenumbers``), valid numbers only, German region by default, any ``+CC`` |
| ``IBAN`` | country + check digits + BBAN, confirmed by the ISO 13616 mod-97 check |
| ``CREDIT_CARD`` | 13–19 digits (spaces/dashes allowed), confirmed by the Luhn check |
| ``IP_ADDRESS`` | IPv4 and IPv6, confirmed by ``ipaddress`` |
| ``DE_TAX_ID`` | German Steuer-ID: 11 digits, ISO 7064 MOD 11,10 check digit and the digit-repetition rule |
| ``DATE_OF_BIRTH`` | a date a few words after a keyword (geboren, geb., Geburtsdatum, born, date of birth…) |
| ``PERSON`` | a given name from ``terms/first_names.txt`` followed by a capitalised surname, or a title
  (Herr, Frau, Mr, Dr…) followed by a capitalised name; list-based, so names outside the list are missed |

Not covered (stated in the data card): postal addresses, passport/ID-card numbers, health data, names without a
title or a listed given name, free-text descriptions that identify someone.

Presidio was the first choice, but its analyzer requires spaCy (and a model download) even for pattern
recognizers; the patterns above are the same ideas with the checksums that matter, tested in
``tests/unit/test_datasets_pii.py``.

Overlapping findings are resolved by priority (e-mail before phone, checksummed numbers before phone numbers), so
a card number is never half-replaced as a phone number.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import phonenumbers

from trainer.datasets.records import Record, map_texts

METHODS = ("redact", "mask", "pseudonymise")
TYPES = ("EMAIL", "IBAN", "CREDIT_CARD", "DE_TAX_ID", "IP_ADDRESS", "DATE_OF_BIRTH", "PHONE", "PERSON")
NOT_COVERED = ("postal addresses", "passport and ID-card numbers", "health data",
               "person names without a title or a listed given name", "indirect identifiers in free text")
_PRIORITY = {t: i for i, t in enumerate(TYPES)}


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    type: str
    value: str


# --- detectors -----------------------------------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_TAX_ID = re.compile(r"(?<!\d)(?<!\d[.,/-])[1-9]\d(?: ?\d{3}){3}(?!\d)(?![.,/-]\d)")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_DIGIT = re.compile(r"\d")
_PHONE_HINT = re.compile(r"\d[\d \-/().]{4,}\d")
_MONTHS = (r"Jan(?:uar|uary)?|Feb(?:ruar|ruary)?|M(?:ä|ae)rz|Mar(?:ch)?|Apr(?:il)?|Mai|May|Jun[ie]?|Jul[iy]?|"
           r"Aug(?:ust)?|Sep(?:t(?:ember)?)?|O[ck]t(?:ober)?|Nov(?:ember)?|De[cz](?:ember)?")
_DATE = re.compile(
    r"\b(?:\d{1,2}[./-]\d{1,2}[./-](?:\d{4}|\d{2})|\d{4}-\d{2}-\d{2}"
    rf"|\d{{1,2}}\.?\s+(?:{_MONTHS})\.?\s+\d{{4}}|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})\b",
    re.IGNORECASE,
)
_DOB_KEYWORD = re.compile(
    r"\b(?:geboren|geb\.|geburtsdatum|geburtstag|date of birth|birth ?date|birthday|born|d\.?o\.?b\.?)", re.I
)
_DOB_WINDOW = 40
_NAME = r"[A-ZÄÖÜ][a-zäöüßéèáàçñ]+(?:-[A-ZÄÖÜ][a-zäöüßéèáàçñ]+)?"
_TITLED = re.compile(rf"\b(?:Herrn?|Frau|Mr|Mrs|Ms|Dr|Prof)\.?\s+(?:Dr\.\s+)?(?P<name>{_NAME}(?:\s+{_NAME})?)")


def _load_first_names() -> re.Pattern[str]:
    path = Path(__file__).parent / "terms" / "first_names.txt"
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    alternatives = "|".join(sorted((re.escape(n) for n in names), key=len, reverse=True))
    return re.compile(rf"\b(?P<name>(?:{alternatives})\s+{_NAME})\b")


_GIVEN_SURNAME = _load_first_names()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    if not (15 <= len(iban) <= 34) or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    moved = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def steuer_id_ok(digits: str) -> bool:
    """German tax identification number: ISO 7064 MOD 11,10 check digit, first digit not 0, and in the first ten
    digits exactly one digit occurs two or three times (the rest at most once)."""
    if len(digits) != 11 or not digits.isdigit() or digits[0] == "0":
        return False
    counts = Counter(digits[:10])
    repeated = [c for c in counts.values() if c > 1]
    if len(repeated) != 1 or repeated[0] not in (2, 3):
        return False
    product = 10
    for ch in digits[:10]:
        total = (int(ch) + product) % 10 or 10
        product = (total * 2) % 11
    check = 11 - product
    return (0 if check == 10 else check) == int(digits[10])


def find_pii(text: str, region: str = "DE") -> list[Finding]:
    """Every PII finding in ``text``, overlaps resolved by type priority, sorted by position."""
    found: list[Finding] = []
    if "@" in text:
        found += [Finding(m.start(), m.end(), "EMAIL", m.group()) for m in _EMAIL.finditer(text)]
    if _DIGIT.search(text):
        for m in _IBAN.finditer(text):
            if iban_ok(m.group().replace(" ", "")):
                found.append(Finding(m.start(), m.end(), "IBAN", m.group()))
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if 13 <= len(digits) <= 19 and luhn_ok(digits):
                found.append(Finding(m.start(), m.end(), "CREDIT_CARD", m.group()))
        for m in _TAX_ID.finditer(text):
            if steuer_id_ok(m.group().replace(" ", "")):
                found.append(Finding(m.start(), m.end(), "DE_TAX_ID", m.group()))
        for m in _IPV4.finditer(text):
            if _is_ip(m.group()):
                found.append(Finding(m.start(), m.end(), "IP_ADDRESS", m.group()))
        for m in _DOB_KEYWORD.finditer(text):
            d = _DATE.search(text, m.end(), m.end() + _DOB_WINDOW)
            if d:
                found.append(Finding(d.start(), d.end(), "DATE_OF_BIRTH", d.group()))
        if _PHONE_HINT.search(text):
            for pm in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
                found.append(Finding(pm.start, pm.end, "PHONE", pm.raw_string))
    if text.count(":") >= 2:
        for m in _IPV6.finditer(text):
            if m.group().count(":") >= 2 and _is_ip(m.group()):
                found.append(Finding(m.start(), m.end(), "IP_ADDRESS", m.group()))
    for pattern in (_TITLED, _GIVEN_SURNAME):
        for m in pattern.finditer(text):
            found.append(Finding(m.start("name"), m.end("name"), "PERSON", m.group("name")))
    return _resolve(found)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _resolve(found: list[Finding]) -> list[Finding]:
    found.sort(key=lambda f: (_PRIORITY[f.type], f.start, -(f.end - f.start)))
    kept: list[Finding] = []
    for f in found:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    kept.sort(key=lambda f: f.start)
    return kept


# --- replacement ---------------------------------------------------------------------------------------------
def canonical_value(kind: str, value: str) -> str:
    """One spelling per value, so the same e-mail or number gets the same pseudonym however it was written."""
    if kind in ("EMAIL", "PERSON", "IP_ADDRESS"):
        return " ".join(value.lower().split())
    if kind == "DATE_OF_BIRTH":
        return " ".join(value.lower().split())
    return re.sub(r"[^0-9A-Za-z+]", "", value).upper()


class HmacPseudonymiser:
    """A keyed pseudonym: the same (type, value) -> the same token under one key; not reversible without it.
    A class (not a closure) so worker processes can receive it."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __call__(self, kind: str, value: str) -> str:
        msg = f"{kind}\x1f{canonical_value(kind, value)}".encode()
        return f"<{kind}_{hmac.new(self.key, msg, hashlib.sha256).hexdigest()[:12]}>"


def hmac_pseudonymiser(key: bytes) -> Callable[[str, str], str]:
    return HmacPseudonymiser(key)


class PiiScrubber:
    """Applies one method to every finding and counts findings by type (for the data card)."""

    def __init__(self, method: str = "redact", pseudonym: Callable[[str, str], str] | None = None,
                 region: str = "DE") -> None:
        if method not in METHODS:
            raise ValueError(f"PII method must be one of {', '.join(METHODS)}")
        if method == "pseudonymise" and pseudonym is None:
            raise ValueError("pseudonymise needs a keyed pseudonym function")
        self.method = method
        self.pseudonym = pseudonym
        self.region = region
        self.counts: Counter[str] = Counter()

    def replacement(self, f: Finding) -> str:
        if self.method == "redact":
            return f"[{f.type}]"
        if self.method == "mask":
            return "".join("*" if c.isalnum() else c for c in f.value)
        assert self.pseudonym is not None
        return self.pseudonym(f.type, f.value)

    def scrub_text(self, text: str) -> str:
        findings = find_pii(text, self.region)
        if not findings:
            return text
        parts: list[str] = []
        pos = 0
        for f in findings:
            parts += [text[pos:f.start], self.replacement(f)]
            pos = f.end
            self.counts[f.type] += 1
        parts.append(text[pos:])
        return "".join(parts)

    def scrub(self, record: Record) -> Record:
        return map_texts(record, self.scrub_text)

    def scrub_all(self, records: Iterator[Record]) -> Iterator[Record]:
        for r in records:
            yield self.scrub(r)
