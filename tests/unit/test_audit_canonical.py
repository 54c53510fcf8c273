"""The audit trail's canonical forms never change: records written and exports signed before msgspec wrote them
must still verify. Both forms are compared, on random values, with the json module calls they were defined by."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import pytest

from gateway.audit.canonical import RECORD_V, canonical_details, record_hash


def reference_details(details: Any) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)


def reference_hash(*fields: Any) -> str:
    payload = json.dumps([RECORD_V, *fields], ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def text(rng: random.Random) -> str:
    """Any code point but lone surrogates (which neither encoder writes): ASCII, controls, quotes, backslashes,
    the BMP, astral planes."""
    pools = ["a", '"\\/\b\f\n\r\t\x00\x1f\x7f', "\u00e9\u2028\u2029\ufeff\uffff", "\U0001f600\U0010ffff"]
    out = []
    for _ in range(rng.randrange(0, 12)):
        pick = rng.random()
        if pick < 0.6:
            out.append(rng.choice(rng.choice(pools)))
        else:
            cp = rng.randrange(0, 0x110000)
            out.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x")
    return "".join(out)


def number(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:  # any bit pattern, NaN and infinities excluded below
        x = struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        return x if x == x and abs(x) != float("inf") else 0.5
    if kind == 1:
        return rng.uniform(-1, 1) * 10 ** rng.uniform(-8, 20)  # both sides of repr's exponent thresholds
    if kind == 2:
        return rng.choice([0.0, -0.0, 1e-4, 1e16, 9999999999999998.0, 1e-5, 0.1, 12.3, 5e-324])
    if kind == 3:
        return rng.randrange(-(2**70), 2**70)  # beyond 64 bits too
    if kind == 4:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1])
    return round(rng.uniform(0, 5000), 1)  # latency_ms


class Color(StrEnum):
    RED = "red"


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return text(rng)
    if kind == 1:
        return number(rng)
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:  # what default=str renders
        return rng.choice([datetime(2026, 12, 7, 19, 0, tzinfo=UTC), Decimal("1.10"), Color.RED, b"raw"])
    if kind in (4, 5, 6):
        return rng.choice([text(rng), number(rng), None])
    if kind == 7:
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 8:
        return tuple(value(rng, depth + 1) for _ in range(rng.randrange(3)))
    return details(rng, depth + 1)


def details(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    return {text(rng): value(rng, depth) for _ in range(rng.randrange(0, 8))}


def test_canonical_details_are_the_json_module_s_on_random_values() -> None:
    rng = random.Random(14)
    for _ in range(20_000):
        d = details(rng)
        assert canonical_details(d) == reference_details(d), d


def test_a_typical_completion_record_and_the_refusals_of_the_json_module() -> None:
    d = {"status": "ok", "prompt_tokens": 12, "completion_tokens": 5, "latency_ms": 1.3, "stream": None,
         "auth_method": "api_key", "auth_id": "abc123", "model_version": None, "route": None}
    assert canonical_details(d) == reference_details(d)
    with pytest.raises(ValueError):  # NaN is refused, as before
        canonical_details({"x": float("nan")})
    with pytest.raises(TypeError):  # mixed key types cannot be sorted, as before
        canonical_details({1: "a", "b": 2})
    assert canonical_details({1: "a"}) == '{"1":"a"}'


def test_record_hash_is_the_json_module_s_on_random_values() -> None:
    rng = random.Random(15)
    for _ in range(20_000):
        fields = [text(rng) if rng.random() < 0.8 else None for _ in range(8)] + [rng.choice(["0" * 64, "ab" * 32])]
        assert record_hash(*fields) == reference_hash(*fields), fields
    # a tampered cell that is not text (verify hands it over): still the json module's answer
    odd = ["2026-12-07T19:00:00.000000+00:00", "inference", 7, None, 1e16, "allow", "rid", "{}", "0" * 64]
    assert record_hash(*odd) == reference_hash(*odd)
