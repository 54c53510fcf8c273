"""The audit chain's secret scrub, written for speed, keeps the plain recursive rule's results exactly."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from gateway.audit.chain import _SECRET_KEY, _SECRET_VALUE, AuditChain
from gateway.crypto import Keyring, open_keyring
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings


def _reference(keyring: Keyring, value: Any, key: str = "") -> Any:
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


def _keyring(tmp_path: Path) -> Keyring:
    """The real keyring (its audit HMAC key) of a fresh embedded data dir."""
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}")
    upgrade(settings)

    async def open_it() -> Keyring:
        db = Database(settings)
        try:
            return await open_keyring(settings, db)
        finally:
            await db.close()

    return asyncio.run(open_it())


def test_fast_scrub_equals_the_plain_rule_on_random_details(tmp_path: Path) -> None:
    chain = AuditChain.__new__(AuditChain)  # only the scrub is exercised: no writer, no database
    chain.keyring = _keyring(tmp_path)
    rng = random.Random(14)
    for _ in range(3000):
        details = {rng.choice(KEYS): _random_value(rng) for _ in range(rng.randint(0, 8))}
        assert chain._scrub(details) == _reference(chain.keyring, details), details
