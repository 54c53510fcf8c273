"""Pinned audit public keys: the trust anchor for ``palisade audit verify``, kept OUTSIDE the database.

Whoever can write the database could add their own row to ``audit_signing_keys`` and sign forged checkpoints
with it, so verification must not take its keys from there. Each audit signing key the gateway creates (or
rotates to) has its public key appended here, one JSON line ``{"key_id", "public_key", "at"}``, append-only and
fsynced, next to the external head file. A key already in the database is pinned when the gateway first loads it:
its private half decrypted under the keyring (AES-GCM with AAD naming the row), which a database writer without
the key-encryption key cannot forge.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.signing import key_id_of, load_public_pem, public_pem
from gateway.settings import Settings


def keys_file_of(settings: Settings) -> Path:
    return settings.audit_keys_file or settings.data_dir / "audit-keys.jsonl"


@dataclass
class PinnedKeys:
    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    #: lines that do not hold a valid Ed25519 key under its own key id: (line number, why)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    exists: bool = True


def read_pins(path: Path) -> PinnedKeys:
    if not path.exists():
        return PinnedKeys(exists=False)
    pins = PinnedKeys()
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            key = load_public_pem(line["public_key"])
        except (ValueError, KeyError, TypeError):
            pins.bad_lines.append((n, "malformed"))
            continue
        if key_id_of(key) != line.get("key_id"):
            pins.bad_lines.append((n, f"key id {line.get('key_id')!r} does not match its public key"))
            continue
        pins.keys[line["key_id"]] = key
    return pins


def pin_key(path: Path, public: Ed25519PublicKey) -> bool:
    """Append ``public`` to the pinned keys unless it is there already; True when it was added."""
    kid = key_id_of(public)
    if kid in read_pins(path).keys:
        return False
    line = {"key_id": kid, "public_key": public_pem(public), "at": datetime.now(UTC).isoformat()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def pinner(path: Path) -> Callable[[Ed25519PublicKey], None]:
    """A ``Pin`` for AuditSigner: pin each key it makes or loads in ``path``."""
    return lambda public: pin_key(path, public)
