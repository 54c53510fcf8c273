"""The audit chain's secret scrub, written for speed, keeps the plain recursive rule's results exactly."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from gateway.audit.chain import _SECRET_KEY, _SECRET_VALUE, AuditChain


class _Keyring:
    def hmac(self, purpose: str, value: str | bytes) -> str:
        raw = value.encode() if isinstance(value, str) else value
        return hashlib.sha256(purpose.encode() + b"\0" + raw).hexdigest()[:16]


def _reference(keyring: _Keyring, value: Any, key: str = "") -> Any:
    """The rule as first written: recurse into everything."""
    if isinstance(value, dict):
        return {k: _reference(keyring, v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reference(keyring, v, key) for v in value]
    if (
        isinstance(value, str | bytes)
        and value
        and (
            (_SECRET_KEY.search(key) and not key.endswith(("_count", "_tokens")))
            or (isinstance(value, str) and _SECRET_VALUE.search(value))
        )
    ):
        return "hmac:" + keyring.hmac("audit-hmac", value)
    return value


KEYS = ["status", "prompt_tokens", "api_key", "password_count", "auth_id", "token", "Authorization", "route",
        "totp_seed", "completion_tokens", "note", 7, "secret_tokens", "cookie"]
VALUES = [None, 0, 3, 2.5, True, False, "", "plain", "Bearer abc.def", "pal_0123456789ab_" + "A" * 43,
          "eyJhbGciOi.eyJzdWIiOi.sig", b"", b"raw-bytes", "mixed Bearer x text", "ünïcode"]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return {rng.choice(KEYS): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    if depth < 3 and roll < 0.25:
        seq = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
        return tuple(seq) if rng.random() < 0.3 else seq
    return rng.choice(VALUES)


def test_fast_scrub_equals_the_plain_rule_on_random_details() -> None:
    chain = AuditChain.__new__(AuditChain)
    chain.keyring = _Keyring()  # type: ignore[assignment]
    rng = random.Random(14)
    for _ in range(3000):
        details = {rng.choice(KEYS): _random_value(rng) for _ in range(rng.randint(0, 8))}
        assert chain._scrub(details) == _reference(chain.keyring, details), details  # type: ignore[arg-type]
